"""Source-task modules: what each hands on, and that the contrastive + self-reconstruction objective is real."""

from __future__ import annotations

import math

import pytest
import torch

from modules.pretext import (
    ClassificationPretext,
    ContrastiveReconstructionPretext,
    ReconstructionPretext,
    augment,
    build_source_module,
    corrupt,
    export_parts,
    grayscale,
    nt_xent,
)
from modules.segmentation import SegmentationModule, read_parts
from tests.threads import one_thread  # noqa: F401  (autouse: one intra-op thread)

SMALL = {"decoder_channels": (16, 16, 8, 8, 8)}



def images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Coloured squares on smooth backgrounds, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, size, size).clone() * 0.5
    for i in range(n):
        r, c = torch.randint(0, size - 10, (2,), generator=g).tolist()
        x[i, :, r:r + 10, c:c + 10] = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.5
    return x


def test_nt_xent_is_low_for_matching_views_and_near_chance_for_unrelated_ones():
    z = torch.eye(16)  # 16 orthogonal embeddings, each view identical to its partner
    assert float(nt_xent(z, z, temperature=0.1)) == pytest.approx(math.log(1 + 30 * math.exp(-10)), rel=1e-4)
    chance = math.log(2 * 16 - 1)  # a uniform guess among the 31 other views
    torch.manual_seed(0)
    flat = nt_xent(torch.randn(16, 8), torch.randn(16, 8), temperature=1e3)  # all logits ~0
    assert abs(float(flat) - chance) < 0.01
    assert nt_xent(z, -z, temperature=0.1) > chance  # positives pushed apart: worse than chance


def test_corruptions_do_what_their_names_say():
    x = images(4)
    noisy, weight = corrupt(x, "denoise", torch.Generator().manual_seed(0))
    assert not torch.equal(noisy, x) and torch.all(weight == 1)
    gray, _ = corrupt(x, "colourise")
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    holed, weight = corrupt(x, "inpaint", torch.Generator().manual_seed(0))
    hole = weight[:, 0] == 1.0
    assert hole.any() and (~hole).any()
    assert torch.all(holed.permute(1, 0, 2, 3)[:, hole] == 0.5)  # grey inside the hole
    assert torch.equal(holed.permute(1, 0, 2, 3)[:, ~hole], x.permute(1, 0, 2, 3)[:, ~hole])
    with pytest.raises(ValueError, match="colourise"):
        corrupt(x, "colorize")


def test_augmented_views_differ_but_stay_images():
    x = images(4)
    g = torch.Generator().manual_seed(0)
    v1, v2 = augment(x, g), augment(x, g)
    assert v1.shape == x.shape and not torch.allclose(v1, v2)
    assert v1.min() >= 0 and v1.max() <= 1
    assert torch.allclose(grayscale(x)[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])


def smooth_fields(n: int = 12, size: int = 32) -> torch.Tensor:
    """Smooth random colour fields in [0, 1]: images that stay recognisable under mild crops."""
    low = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_contrastive_objective_has_every_part_and_decreases_on_a_tiny_run():
    torch.manual_seed(0)
    # mild views so that 30 steps suffice; lr 1e-3 (2e-3 and above made NT-Xent jump around here)
    module = ContrastiveReconstructionPretext(**SMALL, lr=1e-3, seed=0, crop_min_scale=0.85, colour_jitter=0.1,
                                              grayscale_p=0.0)
    x = smooth_fields()

    def objective() -> dict[str, float]:
        module._generator.manual_seed(123)  # same views and corruptions for the before/after comparison
        module.train()  # the objective as optimised: BatchNorm on batch statistics
        with torch.no_grad():
            return {k: float(v) for k, v in module.losses(x).items()}

    before = objective()
    assert set(before) == {"loss", "ntxent", "reconstruction", "denoise", "inpaint", "colourise"}
    optimiser = module.configure_optimizers()
    module.train()
    for _ in range(30):
        loss = module.losses(x)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = objective()
    assert after["loss"] < 0.9 * before["loss"]
    assert after["ntxent"] < before["ntxent"]
    assert after["reconstruction"] < before["reconstruction"]


def test_each_source_hands_on_what_it_trains(tmp_path):
    classification = ClassificationPretext(num_classes=3, **SMALL)
    assert set(classification.transferable_parts()) == {"encoder"}
    for module in (ReconstructionPretext(**SMALL), ContrastiveReconstructionPretext(**SMALL),
                   SegmentationModule(**SMALL)):
        assert set(module.transferable_parts()) == {"encoder", "decoder"}
    contrastive = ContrastiveReconstructionPretext(**SMALL)
    parts = read_parts(export_parts(contrastive, tmp_path / "parts.pt", {"task": "contrastive"}))
    assert parts["meta"]["task"] == "contrastive"
    decoder = contrastive.net.decoder.state_dict()
    assert set(parts["decoder"]) == set(decoder)
    assert all(torch.equal(parts["decoder"][k], decoder[k]) for k in decoder)
    # the transferred decoder of a target run is this very decoder
    target = SegmentationModule(**SMALL, encoder_init="checkpoint", decoder_init="checkpoint",
                                encoder_checkpoint=str(tmp_path / "parts.pt"),
                                decoder_checkpoint=str(tmp_path / "parts.pt"))
    assert all(torch.equal(target.net.decoder.state_dict()[k], decoder[k]) for k in decoder)


def test_classification_pretext_learns_labels():
    torch.manual_seed(0)
    module = ClassificationPretext(num_classes=2, **SMALL, lr=3e-3)
    x = images(8)
    labels = (x[:, 0, 0, 0] > 0.25).long()
    optimiser = module.configure_optimizers()
    first = None
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(module(x), labels)
        first = float(loss) if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss) < first


def test_unknown_source_task_suggests_a_name():
    with pytest.raises(ValueError, match='Did you mean "contrastive"'):
        build_source_module("contrastiv")


def test_the_reconstruction_pretext_cannot_be_solved_by_copying_its_input():
    """Masked patches and noise: the identity map (what the U-Net's shallow skip could learn) is far from the
    clean image; validation corruptions repeat exactly, so the validation loss measures the network."""
    module = ReconstructionPretext(mask_ratio=0.5, patch_size=8, noise_std=0.1, **SMALL)
    x = images(8)
    corrupted = module.corrupt(x, torch.Generator().manual_seed(0))
    grey = (corrupted - 0.5).abs().amax(1) < 0.35  # masked pixels: grey plus noise
    assert 0.3 < grey.float().mean() < 0.7
    assert torch.nn.functional.mse_loss(corrupted, x) > 0.01
    from modules.pretext import validation_generator

    again = module.corrupt(x, validation_generator(3))
    assert torch.equal(again, module.corrupt(x, validation_generator(3)))
    with pytest.raises(ValueError, match="mask_ratio"):
        ReconstructionPretext(mask_ratio=1.0, **SMALL)
