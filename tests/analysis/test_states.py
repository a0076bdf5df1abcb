"""Weights from anywhere (state dict, module, .ckpt/.pt, .safetensors) and their interpolation."""

import pytest
import torch
from safetensors.torch import save_file

from analysis.errors import ConfigError
from analysis.states import clone_state, detached_copy, lerp_state, load_into, load_state, state_on
from tests.analysis.tiny_models import TinyNet
from tests.callbacks.tiny_callback_models import TinyClassifier, make_trainer


def test_checkpoints_torch_files_and_safetensors_load_as_state_dicts(tmp_path):
    model = TinyNet(seed=4)
    state = model.state_dict()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "run.ckpt")
    torch.save(state, tmp_path / "weights.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.safetensors"))
    for source in ("run.ckpt", "weights.pt", "weights.safetensors"):
        loaded = load_state(tmp_path / source)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert all(torch.equal(load_state(model)[k], v) for k, v in state.items())


def test_missing_files_and_foreign_weights_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_state(tmp_path / "absent.ckpt")
    with pytest.raises(ConfigError, match="same key prefixes"):
        load_into(TinyNet(), TinyNet().net.state_dict())  # keys lack the "net." prefix


def test_lerp_is_exact_at_both_ends_and_keeps_counters():
    a, b = TinyNet(seed=1).state_dict(), TinyNet(seed=2).state_dict()
    for weight, expected in ((0.0, a), (1.0, b)):
        mixed = lerp_state(a, b, weight)
        assert all(torch.equal(mixed[k], expected[k]) for k in a if a[k].is_floating_point())
    half = lerp_state(a, b, 0.5)
    assert torch.allclose(half["net.head.weight"], (a["net.head.weight"] + b["net.head.weight"]) / 2)
    assert torch.equal(half["net.block1.1.num_batches_tracked"], a["net.block1.1.num_batches_tracked"])


def test_detached_copy_leaves_the_trainer_link_and_gradients_alone(tmp_path):
    model = TinyClassifier()
    trainer = make_trainer(tmp_path, [], epochs=1)
    model.trainer = trainer
    copy = detached_copy(model)
    assert model.trainer is trainer and copy._trainer is None
    assert all(p.requires_grad for p in model.parameters()) and not any(p.requires_grad for p in copy.parameters())


def test_clone_state_is_a_detached_cpu_copy_and_state_on_moves_to_the_module_device():
    model = TinyNet()
    cloned = clone_state(model)
    cloned["net.head.bias"].add_(1.0)
    assert not torch.equal(cloned["net.head.bias"], model.state_dict()["net.head.bias"])
    moved = state_on(model, cloned)
    assert all(v.device == torch.device("cpu") for v in moved.values())


def test_interpolating_different_architectures_is_refused():
    a = TinyNet().state_dict()
    b = dict(a)
    del b["net.head.bias"]
    with pytest.raises(ConfigError, match="different keys"):
        lerp_state(a, b, 0.5)
    b = {**a, "net.head.bias": torch.zeros(7)}
    with pytest.raises(ConfigError, match="has shape"):
        lerp_state(a, b, 0.5)
