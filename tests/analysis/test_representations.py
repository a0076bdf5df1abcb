"""capture_representations: expected shapes per pooling, repeatable, modes restored, in-place safe."""

import pytest
import torch

from analysis.errors import ConfigError
from analysis.representations import capture_representations, pool
from tests.analysis.tiny_models import TinyNet

LAYERS = ["net.block1", "net.block2", "net.block3", "net.block4", "net.head"]


@pytest.mark.parametrize("pooling, expected", [
    ("none", {"net.block1": (12, 8, 8, 8), "net.block4": (12, 8, 1, 1), "net.head": (12, 4)}),
    ("mean", {"net.block1": (12, 8), "net.block4": (12, 8), "net.head": (12, 4)}),
    ("flatten", {"net.block1": (12, 512), "net.block4": (12, 8), "net.head": (12, 4)}),
])
def test_shapes_follow_the_pooling(pooling, expected):
    model = TinyNet()
    layers = ["net.block1", "net.block4", "net.head"]
    reps = capture_representations(model, layers, torch.randn(12, 1, 16, 16), pooling=pooling, batch_size=5)
    assert {name: tuple(x.shape) for name, x in reps.items()} == expected


def test_pooling_can_differ_per_layer():
    reps = capture_representations(TinyNet(), "net.block*", torch.randn(3, 1, 16, 16),
                                   pooling={"net.block1": "mean", "*": "flatten"})
    assert reps["net.block1"].shape == (3, 8) and reps["net.block2"].shape == (3, 128)


def test_same_weights_give_identical_captures_and_modes_are_restored():
    model = TinyNet()
    model.train()
    model.net.block2.eval()  # a deliberately frozen part must stay in eval mode
    probe = torch.randn(20, 1, 16, 16)
    first = capture_representations(model, None, probe, batch_size=7)
    second = capture_representations(model, None, probe, batch_size=7)
    assert list(first) == LAYERS
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert model.training and model.net.block1.training and not model.net.block2.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("batch_size", [4, 8])  # several batches, and the whole probe in one
def test_an_output_changed_in_place_afterwards_is_captured_as_the_layer_gave_it(batch_size):
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(inplace=True))
    x = torch.randn(8, 3)
    reps = capture_representations(model, ["0", "1"], x, batch_size=batch_size)
    assert torch.equal(reps["0"], model[0](x).detach()) and (reps["0"] < 0).any()
    assert torch.equal(reps["1"], model[0](x).clamp(min=0).detach())


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match='Did you mean "mean"'):
        capture_representations(TinyNet(), ["net.head"], torch.zeros(2, 1, 16, 16), pooling="maen")
    with pytest.raises(ConfigError, match="batch_size >= 1"):
        capture_representations(TinyNet(), ["net.head"], torch.zeros(2, 1, 16, 16), batch_size=0)
    with pytest.raises(ConfigError, match='Did you mean "flatten"'):
        pool(torch.zeros(2, 3, 4, 4), "flaten")


def test_a_layer_the_forward_pass_skips_is_named():
    model = TinyNet()
    model.unused = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"\['unused'\] were not called"):
        capture_representations(model, ["net.head", "unused"], torch.zeros(2, 1, 16, 16))
