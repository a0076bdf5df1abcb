"""ClassificationModule: frozen parts stay bit-identical, trained parts move, the head policy is explicit."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from modules.classification import ClassificationModule
from modules.finetune_modes import FinetuneConfigError

K = 5


def data(n: int = 64, channels: int = 1, size: int = 28, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=generator)
    y = torch.randint(0, K, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=generator)


def fit(module: ClassificationModule, tmp_path, loader: DataLoader | None = None, epochs: int = 2) -> None:
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, loader or data())


def conv4(mode: str, **kw) -> ClassificationModule:
    torch.manual_seed(0)
    return ClassificationModule("conv4", K, hidden=8, lr=0.05, finetune_mode=mode, **kw)


def snapshot(module: ClassificationModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.net.state_dict().items()}


def changed_keys(before: dict, module: ClassificationModule) -> set[str]:
    return {k for k, v in module.net.state_dict().items() if not torch.equal(before[k], v)}


def test_head_only_leaves_every_non_head_parameter_and_statistic_bit_identical(tmp_path):
    module = conv4("head")
    before = snapshot(module)
    fit(module, tmp_path)
    changed = changed_keys(before, module)
    assert changed == {"head.weight", "head.bias"}  # body weights, BN affine and running stats untouched


def test_full_fine_tuning_moves_every_group_and_the_batchnorm_statistics(tmp_path):
    module = conv4("full")
    before = snapshot(module)
    fit(module, tmp_path)
    changed = changed_keys(before, module)
    for group in module.layer_names:
        assert any(k.startswith(group + ".") for k in changed), group
    assert "block3.1.running_mean" in changed  # the control: trainable BN statistics do follow the data


def test_lower_layers_trains_the_first_blocks_and_the_head_and_leaves_the_upper_blocks_unchanged(tmp_path):
    """The head trains too, so "lower" and head-only both end with a trained classifier (like for like)."""
    module = conv4("lower", lower_layers=2)
    assert module.trainable_groups == ["block1", "block2", "head"]
    before = snapshot(module)
    fit(module, tmp_path)
    changed = changed_keys(before, module)
    assert {k.split(".")[0] for k in changed} == {"block1", "block2", "head"}
    assert not any(k.startswith(("block3", "block4")) for k in changed)


def test_lower_mode_on_a_timm_model_trains_its_first_feature_groups_and_its_classifier():
    module = ClassificationModule("test_resnet", K, in_channels=1, finetune_mode="lower", lower_layers=2)
    assert module.trainable_groups == ["act1", "layer1", "fc"]


def test_a_list_of_groups_trains_exactly_those(tmp_path):
    module = conv4("groups", trainable=["block2", "head"])
    before = snapshot(module)
    fit(module, tmp_path)
    assert {k.split(".")[0] for k in changed_keys(before, module)} == {"block2", "head"}


def test_frozen_batchnorm_layers_stay_in_eval_mode_whatever_train_is_called_with():
    module = conv4("head").train()
    assert module.net.block1[1].training is False and module.net.block4[1].training is False
    assert module.net.head.training is True
    full = conv4("full").train()
    assert full.net.block1[1].training is True


def test_the_optimizer_only_holds_trainable_parameters():
    module = conv4("head")
    optimizer = module.configure_optimizers()
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(module.net.head.weight), id(module.net.head.bias)}


def test_frozen_state_lists_frozen_parameters_and_frozen_norm_buffers():
    state = conv4("lower", lower_layers=1).frozen_state()
    assert "block2.0.weight" in state and "block4.1.running_var" in state
    assert not any(k.startswith(("block1.", "head.")) for k in state)
    assert "block2.0.weight" in conv4("head").frozen_state()


def test_reinit_head_policy_keeps_the_body_and_draws_the_head_from_its_seed():
    source = conv4("full")
    with torch.no_grad():
        source.net.head.weight.add_(1.0)
    state = source.state_dict()
    a = ClassificationModule("conv4", K, hidden=8, finetune_mode="head", head_policy="reinit", head_seed=7)
    b = ClassificationModule("conv4", K, hidden=8, finetune_mode="full", head_policy="reinit", head_seed=7)
    a.load_pretrained(state)
    b.load_pretrained(state)
    assert torch.equal(a.net.block3[0].weight, source.net.block3[0].weight)
    assert torch.equal(a.net.head.weight, b.net.head.weight)  # same seed: same head in every mode
    assert not torch.equal(a.net.head.weight, source.net.head.weight)
    assert a.hparams.head_policy == "reinit"


def test_keep_head_policy_loads_the_source_head(tmp_path):
    source = conv4("full")
    path = tmp_path / "source.pt"
    torch.save(source.state_dict(), path)
    target = ClassificationModule("conv4", K, hidden=8, head_policy="keep")
    target.load_pretrained(path)
    assert torch.equal(target.net.head.weight, source.net.head.weight)


def test_keeping_a_head_of_another_class_count_is_refused_with_the_fix():
    source = ClassificationModule("conv4", 10, hidden=8)
    target = ClassificationModule("conv4", K, hidden=8, head_policy="keep")
    with pytest.raises(FinetuneConfigError, match="reinit"):
        target.load_pretrained(source.state_dict())


def test_weights_of_another_architecture_are_refused():
    other = ClassificationModule("conv4", K, hidden=16)
    with pytest.raises(FinetuneConfigError, match="hidden"):
        ClassificationModule("conv4", K, hidden=8).load_pretrained(other.state_dict())


def test_a_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        conv4("full").load_pretrained(tmp_path / "nothing.pt")


@pytest.mark.parametrize("kwargs, match", [
    ({"backbone": "resnet81"}, 'Did you mean "resnet18"'),
    ({"finetune_mode": "haed"}, 'Did you mean "head"'),
    ({"head_policy": "keap"}, 'Did you mean "keep"'),
    ({"optimizer": "adan"}, "Fix"),
    ({"finetune_mode": "groups", "trainable": ["blok1"]}, 'Did you mean "block1"'),
    ({"finetune_mode": "lower", "lower_layers": 9}, "outside 1..4"),
])
def test_bad_settings_name_the_problem_and_the_fix(kwargs, match):
    with pytest.raises(FinetuneConfigError, match=match):
        ClassificationModule(**{"num_classes": K, "hidden": 8, **kwargs})


def test_a_timm_resnet_in_head_only_mode_keeps_its_body_bit_identical(tmp_path):
    torch.manual_seed(0)
    module = ClassificationModule("resnet18", K, in_channels=3, image_size=32, lr=0.05, finetune_mode="head")
    assert module.layer_names == ["act1", "layer1", "layer2", "layer3", "layer4", "fc"]
    before = snapshot(module)
    fit(module, tmp_path, data(16, channels=3, size=32), epochs=1)
    assert changed_keys(before, module) == {"fc.weight", "fc.bias"}


def test_head_only_layers_keep_a_linear_cka_of_one_with_the_start_network(tmp_path):
    from callbacks import RepresentationSnapshot, SimilarityTracker

    module = conv4("head")
    probe = torch.randn(48, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    snapshots = RepresentationSnapshot(probe, probe_size=48, save=False)
    tracker = SimilarityTracker(("start",), "linear_cka", snapshots=snapshots, heatmaps="never", out_dir=tmp_path)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[snapshots, tracker],
                        accelerator="cpu")
    trainer.fit(module, data())
    final = {r["layer"]: r["value"] for r in tracker.rows if r["tag"] == snapshots.latest.tag}
    assert list(final) == module.default_watch_layers()
    for layer in ("net.block1", "net.block2", "net.block3", "net.block4"):
        assert final[layer] == pytest.approx(1.0, abs=1e-6)  # identical inputs; float rounding only
    assert final["net.head"] < 1.0 - 1e-4  # the trained head did change its representation
