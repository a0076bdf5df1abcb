"""SegmentationModule: every init and freeze policy does exactly what it says (checked parameter by parameter)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from modules.nets.imagenet import embedded_imagenet_state
from modules.nets.unet import UNetConfigError
from modules.pretext import ClassificationPretext, ReconstructionPretext, export_parts
from modules.segmentation import SegmentationModule
from tests.threads import one_thread  # noqa: F401  (autouse: one intra-op thread)

SMALL = {"decoder_channels": (16, 16, 8, 8, 8)}
SIZE = 32



def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def float_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


class Blobs(Dataset):
    """Bright squares on dark noise: image [3,S,S] in [0,1], binary mask [S,S]."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.3
        self.masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
        for i in range(n):
            r, c = torch.randint(0, SIZE - 12, (2,), generator=g).tolist()
            self.masks[i, r:r + 12, c:c + 12] = 1
            self.images[i, :, r:r + 12, c:c + 12] += 0.6

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i], "label": torch.tensor(i % 3)}


@pytest.fixture(scope="module")
def source_parts(tmp_path_factory) -> dict:
    """Parts files of a reconstruction source (encoder + decoder) and a classification source (encoder)."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(1)
    recon = ReconstructionPretext(**SMALL)
    classif = ClassificationPretext(num_classes=3, **SMALL)
    return {"recon": export_parts(recon, root / "recon.pt", {"task": "reconstruction"}),
            "recon_encoder": state(recon.net.encoder), "recon_decoder": state(recon.net.decoder),
            "classification": export_parts(classif, root / "cls.pt", {"task": "classification"}),
            "classification_encoder": state(classif.net.encoder)}



def quiet_trainer(root, epochs: int, **options) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or sanity check, for the module's own tests."""
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=root, num_sanity_val_steps=0, accelerator="cpu",
                     **options)

def test_imagenet_encoder_init_loads_the_imagenet_weights_and_leaves_the_decoder_random():
    torch.manual_seed(0)
    module = SegmentationModule(encoder_init="imagenet", **SMALL)
    torch.manual_seed(0)
    fresh = SegmentationModule(encoder_init="random", **SMALL)
    imagenet = embedded_imagenet_state()
    for key, value in module.net.encoder.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, imagenet[key.removeprefix("model.")]), key
    assert same(state(module.net.decoder), state(fresh.net.decoder))  # same seed, untouched decoder
    assert not same(state(module.net.encoder), state(fresh.net.encoder))


def test_checkpoint_init_transfers_the_sources_encoder_and_decoder_but_not_the_head(source_parts):
    module = SegmentationModule(encoder_init="checkpoint", decoder_init="checkpoint", **SMALL,
                                encoder_checkpoint=str(source_parts["recon"]),
                                decoder_checkpoint=str(source_parts["recon"]))
    assert same(state(module.net.encoder), source_parts["recon_encoder"])
    assert same(state(module.net.decoder), source_parts["recon_decoder"])
    assert module.net.segmentation_head[0].out_channels == 2  # fresh head for the target classes


def test_encoder_checkpoint_with_random_decoder_keeps_the_decoder_fresh(source_parts):
    torch.manual_seed(3)
    module = SegmentationModule(encoder_init="checkpoint", encoder_checkpoint=str(source_parts["recon"]), **SMALL)
    torch.manual_seed(3)
    fresh = SegmentationModule(**SMALL)
    assert same(state(module.net.encoder), source_parts["recon_encoder"])
    assert same(state(module.net.decoder), state(fresh.net.decoder))
    assert not same(state(module.net.decoder), source_parts["recon_decoder"])


def test_a_source_without_decoder_cannot_provide_one(source_parts):
    with pytest.raises(UNetConfigError, match="holds no decoder"):
        SegmentationModule(decoder_init="checkpoint", decoder_checkpoint=str(source_parts["classification"]),
                           **SMALL)
    module = SegmentationModule(encoder_init="checkpoint", encoder_checkpoint=str(source_parts["classification"]),
                                **SMALL)
    assert same(state(module.net.encoder), source_parts["classification_encoder"])


def _train_steps(module: SegmentationModule, steps: int = 3) -> None:
    data = Blobs(8)
    optimiser = module.configure_optimizers()
    module.train()
    module.on_train_epoch_start()  # what Lightning calls: frozen BatchNorms go to eval mode
    for _ in range(steps):
        batch = {"image": data.images, "mask": data.masks}
        loss = module.loss(module(batch["image"]), batch["mask"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


@pytest.mark.parametrize("freeze,frozen,trained", [("encoder", "encoder", "decoder"),
                                                   ("decoder", "decoder", "encoder")])
def test_freeze_policy_keeps_that_part_bit_identical_and_trains_the_other(freeze, frozen, trained):
    torch.manual_seed(0)
    module = SegmentationModule(freeze=freeze, **SMALL)
    before_frozen = state(getattr(module.net, frozen))  # parameters and BatchNorm running statistics
    before_trained = float_params(getattr(module.net, trained))
    before_head = float_params(module.net.segmentation_head)
    _train_steps(module)
    assert same(state(getattr(module.net, frozen)), before_frozen)
    assert all(not p.requires_grad for p in getattr(module.net, frozen).parameters())
    assert not same(float_params(getattr(module.net, trained)), before_trained)
    assert not same(float_params(module.net.segmentation_head), before_head)


def test_no_freeze_trains_everything():
    torch.manual_seed(0)
    module = SegmentationModule(**SMALL)
    before = {name: float_params(getattr(module.net, name)) for name in ("encoder", "decoder")}
    _train_steps(module, 2)
    for name in ("encoder", "decoder"):
        assert not same(float_params(getattr(module.net, name)), before[name])


def test_lightning_fit_records_train_loss_and_validation_dice_per_epoch(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule(lr=5e-3, **SMALL)
    trainer = quiet_trainer(tmp_path, 3)
    train, val = DataLoader(Blobs(16), batch_size=8, shuffle=True), DataLoader(Blobs(8, seed=1), batch_size=8)
    trainer.fit(module, train, val)
    assert [row["epoch"] for row in module.history] == [0, 1, 2]
    for row in module.history:
        assert 0.0 <= row["val/dice"] <= 1.0 and 0.0 <= row["val/iou"] <= 1.0
        assert row["train/loss"] > 0
    assert module.history[-1]["train/loss"] < module.history[0]["train/loss"]
    result = trainer.test(module, val, verbose=False)[0]
    assert 0.0 <= result["test/dice"] <= 1.0


def test_dice_metric_is_the_foreground_dice_averaged_over_images():
    module = SegmentationModule(**SMALL)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, :2] = 1  # 8 foreground pixels per image
    pred = target.clone()
    pred[1] = 0
    pred[1, 0] = 1  # image 2: 4 of 8 found, no false positives -> Dice 2*4/(4+8) = 2/3
    module.val_dice.update(pred, target)
    assert float(module.val_dice.compute()) == pytest.approx((1.0 + 2 / 3) / 2)


@pytest.mark.parametrize("kwargs,message", [
    ({"encoder_init": "imagenett"}, 'Did you mean "imagenet"'),
    ({"freeze": "encoders"}, 'Did you mean "encoder"'),
    ({"encoder": "tu-tf_efficientnet_lite00"}, 'Did you mean "tu-tf_efficientnet_lite0"'),
    ({"encoder_init": "checkpoint"}, "needs encoder_checkpoint"),
])
def test_bad_settings_name_the_problem_and_the_fix(kwargs, message):
    with pytest.raises(UNetConfigError, match=message):
        SegmentationModule(**{**SMALL, **kwargs})


def test_a_missing_parts_file_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the source stage first"):
        SegmentationModule(encoder_init="checkpoint", encoder_checkpoint=str(tmp_path / "none.pt"), **SMALL)


def test_a_frozen_encoder_with_train_mode_norms_drifts_although_no_weight_trains():
    """frozen_norms="train": BatchNorm uses batch statistics and updates its running statistics, so the frozen
    encoder's buffers move; "eval" (the default, smp's freeze_encoder) keeps them bit-identical."""
    torch.manual_seed(0)
    drifting = SegmentationModule(freeze="encoder", frozen_norms="train", **SMALL)
    weights = float_params(drifting.net.encoder)
    buffers = {k: v.clone() for k, v in drifting.net.encoder.state_dict().items() if "running" in k}
    _train_steps(drifting)
    assert same(float_params(drifting.net.encoder), weights)
    assert any(not torch.equal(drifting.net.encoder.state_dict()[k], v) for k, v in buffers.items())
    with pytest.raises(UNetConfigError, match='Did you mean "eval"'):
        SegmentationModule(frozen_norms="evl", **SMALL)


def test_cosine_schedule_decays_the_learning_rate_to_zero_over_the_epoch_budget(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule(lr=4e-3, schedule="cosine", **SMALL)
    trainer = quiet_trainer(tmp_path, 4, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, DataLoader(Blobs(8), batch_size=8), DataLoader(Blobs(8, seed=1), batch_size=8))
    (scheduler,) = trainer.lr_scheduler_configs
    assert scheduler.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert [row["step"] for row in module.history] == [1, 2, 3, 4]  # the optimiser step of every validation


def test_per_image_test_dice_agrees_with_the_torchmetrics_average(tmp_path):
    """The per-image Dice the study reports the spread of averages to exactly the logged test Dice."""
    torch.manual_seed(0)
    module = SegmentationModule(lr=5e-3, **SMALL)
    trainer = quiet_trainer(tmp_path, 2)
    data = DataLoader(Blobs(12, seed=2), batch_size=5)
    trainer.fit(module, DataLoader(Blobs(16), batch_size=8), data)
    result = trainer.test(module, data, verbose=False)[0]
    assert len(module.test_image_dice) == 12
    assert sum(module.test_image_dice) / 12 == pytest.approx(result["test/dice"], abs=1e-5)
