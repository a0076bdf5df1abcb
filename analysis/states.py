"""Weights as plain state dicts: load them from wherever they are, copy models, interpolate.

A "state source" is a state dict, an ``nn.Module``, or a path to a Lightning ``.ckpt`` / torch ``.pt`` /
``.pth`` file (its ``state_dict`` entry when present) or a ``.safetensors`` file.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import torch
from torch import nn

from analysis.errors import ConfigError

StateSource: TypeAlias = Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the module's state dict (safe to keep while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_state(source: StateSource) -> dict[str, torch.Tensor]:
    """Resolve a state source to a ``{key: tensor}`` dict (tensors are not copied for dict input)."""
    if isinstance(source, nn.Module):
        return clone_state(source)
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}. Fix: pass an existing .ckpt/.pt/.safetensors "
                                "path or a state dict")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled objects beyond tensors
        raise ConfigError(f"could not load weights from {path} safely ({err})",
                          "load it yourself (torch.load) and pass the state dict") from err
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{path} holds a {type(obj).__name__}, not a state dict",
                          "save model.state_dict() or a Lightning checkpoint")
    return dict(obj)


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with an error that shows what does not line up."""
    own = set(module.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise ConfigError(
            f"weights do not fit {type(module).__name__}: missing {missing[:4]}, unexpected {unexpected[:4]}",
            "pass a state dict of the same architecture with the same key prefixes (a LightningModule's "
            "keys include its attribute name, e.g. 'net.block1.0.weight')")
    module.load_state_dict(state, strict=True)


def detached_copy(module: nn.Module) -> nn.Module:
    """A deep copy for analysis that leaves the training module (and its trainer link) untouched."""
    trainer = getattr(module, "_trainer", None)
    try:
        if trainer is not None:
            module._trainer = None
        duplicate = copy.deepcopy(module)
    finally:
        if trainer is not None:
            module._trainer = trainer
    for p in duplicate.parameters():
        p.requires_grad_(False)
    return duplicate


def lerp_state(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
               weight: float) -> dict[str, torch.Tensor]:
    """(1 - w) a + w b for floating entries; other entries (counters) come from ``a``.

    Uses ``torch.lerp``, which is exact at both ends (w=0 gives a, w=1 gives b bit for bit) and
    returns ``a`` exactly when a == b.
    """
    if set(state_a) != set(state_b):
        diff = sorted(set(state_a) ^ set(state_b))
        raise ConfigError(f"the two state dicts have different keys: {diff[:4]}",
                          "interpolate between weights of the same architecture")
    out: dict[str, torch.Tensor] = {}
    for key, a in state_a.items():
        b = state_b[key]
        if a.shape != b.shape:
            raise ConfigError(f'"{key}" has shape {tuple(a.shape)} in one state and {tuple(b.shape)} '
                              "in the other", "interpolate between weights of the same architecture")
        out[key] = torch.lerp(a, b.to(a.device, a.dtype), weight) if a.is_floating_point() else a.clone()
    return out


def state_on(module: nn.Module, state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state moved to the module's device (for fast repeated loading)."""
    device = next((t.device for t in module.state_dict().values()), torch.device("cpu"))
    return {k: v.to(device) for k, v in state.items()}
