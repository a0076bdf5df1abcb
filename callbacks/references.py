"""What a snapshot is compared with: the start of this fit, a random-init network, other weights, or
precomputed representations. Each reference turns into representations on the same probe set."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import torch
from torch import nn

from analysis.states import StateSource, detached_copy, load_into, load_state
from callbacks.errors import CallbackConfigError, did_you_mean
from callbacks.run_outputs import read_arrays


@dataclass(frozen=True)
class StartReference:
    """The first snapshot the tracker sees in this fit (by default the one at fit start)."""


@dataclass(frozen=True)
class RandomInitReference:
    """The same architecture freshly initialised with ``seed`` (every submodule's ``reset_parameters``),
    or built by ``factory()`` under that seed.

    The default seed is deliberately unusual: a model built right after ``seed_everything(s)`` would be
    re-created bit for bit by a reference with the same small seed ``s``.
    """

    seed: int = 987_654_321
    factory: Callable[[], nn.Module] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class WeightsReference:
    """Another set of weights for the same architecture (state dict, module or checkpoint path)."""

    source: StateSource = field(compare=False)


@dataclass(frozen=True)
class RepresentationsReference:
    """Representations computed elsewhere on the same probe set (dict of tensors or a snapshot file)."""

    source: Mapping[str, torch.Tensor] | str | os.PathLike = field(compare=False)


Reference: TypeAlias = StartReference | RandomInitReference | WeightsReference | RepresentationsReference
_SHORTCUTS = {"start": StartReference, "random_init": RandomInitReference}


def as_reference(spec: Any) -> Reference:
    """Accept a reference object, "start", "random_init", a state dict, a module or a checkpoint path."""
    if isinstance(spec, StartReference | RandomInitReference | WeightsReference | RepresentationsReference):
        return spec
    if isinstance(spec, str) and spec in _SHORTCUTS:
        return _SHORTCUTS[spec]()
    if isinstance(spec, nn.Module | Mapping):
        return WeightsReference(spec)
    if isinstance(spec, str | os.PathLike) and Path(spec).suffix in {".ckpt", ".pt", ".pth"}:
        return WeightsReference(spec)
    hint = did_you_mean(str(spec), _SHORTCUTS) if isinstance(spec, str) else ""
    raise CallbackConfigError(f"cannot use {spec!r} as a similarity reference.{hint}",
                              'use "start", "random_init", a state dict, a module, a .ckpt/.pt path, or '
                              "RepresentationsReference(...) for precomputed snapshots")


def random_init_copy(module: nn.Module, seed: int = 987_654_321,
                     factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A freshly initialised copy of ``module`` (same device), reproducible from ``seed``."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if factory is not None:
            fresh = factory().to(device)
        else:
            fresh = detached_copy(module)
            for submodule in fresh.modules():
                reset = getattr(submodule, "reset_parameters", None)
                if callable(reset):
                    reset()
    return fresh


Capture = Callable[[nn.Module], dict[str, torch.Tensor]]


def reference_representations(reference: Reference, module: nn.Module,
                              capture: Capture) -> dict[str, torch.Tensor]:
    """Representations of a (non-start) reference on the probe set, via ``capture(model)``."""
    if isinstance(reference, RandomInitReference):
        return capture(random_init_copy(module, reference.seed, reference.factory))
    if isinstance(reference, WeightsReference):
        other = detached_copy(module)
        load_into(other, load_state(reference.source))
        return capture(other)
    if isinstance(reference, RepresentationsReference):
        source = reference.source
        reps = read_arrays(source) if isinstance(source, str | os.PathLike) else source
        return {k: v.detach().float().cpu() for k, v in reps.items()}
    raise TypeError(f"no representations for {reference!r}")
