"""Layer outputs of a model on given inputs: forward hooks, eval mode, no grad, train flags restored.

``capture_representations(model, layers, inputs, pooling=...)`` is what every study and the
``RepresentationSnapshot`` callback use to turn a network into per-layer [N, ...] tensors, which
``similarity.compare_representations`` then compares. Plain PyTorch, no Lightning.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from analysis.errors import ConfigError, check_choice
from analysis.layers import resolve_layers

POOLINGS = ("none", "mean", "flatten")
Forward = Callable[[nn.Module, torch.Tensor], Any]


def pool(x: torch.Tensor, how: str) -> torch.Tensor:
    """'none' keeps (N, C, H, W...), 'mean' averages spatial dims to (N, C), 'flatten' gives (N, C*H*W)."""
    if how == "none" or x.dim() <= 2:
        return x
    if how == "mean":
        return x.mean(dim=tuple(range(2, x.dim())))
    if how == "flatten":
        return x.flatten(1)
    check_choice("pooling", how, POOLINGS)
    raise AssertionError("unreachable")


def _pooling_for(layer: str, pooling: str | Mapping[str, str]) -> str:
    if isinstance(pooling, str):
        return pooling
    for pattern, how in pooling.items():
        if pattern == layer or fnmatch.fnmatchcase(layer, pattern):
            return how
    return pooling.get("*", "none")


def _first_tensor(output: Any, layer: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, list | tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f'layer "{layer}" returns {type(output).__name__}, not a tensor',
                      "watch a layer whose forward returns a tensor (or a tuple starting with one)")


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def capture_representations(model: nn.Module, layers: Sequence[str] | str | None, inputs: torch.Tensor, *,
                            pooling: str | Mapping[str, str] = "none", batch_size: int = 256,
                            forward: Forward | None = None) -> dict[str, torch.Tensor]:
    """Outputs of the named layers (names or globs) on ``inputs``, as float32 CPU tensors.

    The model runs in eval mode without grad; every submodule's train/eval flag is restored after.
    A layer called several times in one forward pass keeps its last output. Each output is copied once
    (into the result), when the hook sees it, so later in-place operations cannot change it.
    """
    names = resolve_layers(model, layers)
    how = {name: _pooling_for(name, pooling) for name in names}
    for value in how.values():
        check_choice("pooling", value, POOLINGS)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}", "pass batch_size >= 1")
    modules = dict(model.named_modules())
    current: dict[str, torch.Tensor] = {}
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def hook_for(name: str):
        def hook(_module, _args, output):
            tensor = _first_tensor(output, name).detach()
            pooled = pool(tensor, how[name])
            # a view of the layer's output must be copied now: a later in-place op (ReLU(inplace=True))
            # would change it before the forward pass ends; a pooled result is already new memory
            alias = pooled.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
            current[name] = pooled.to("cpu", torch.float32, copy=alias)
        return hook

    flags = {m: m.training for m in model.modules()}
    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    device = _device_of(model)
    run = forward or (lambda m, x: m(x))
    try:
        model.eval()
        for start in range(0, len(inputs), batch_size):
            current.clear()
            run(model, inputs[start:start + batch_size].to(device))
            silent = [n for n in names if n not in current]
            if silent:
                raise ConfigError(f"layers {silent} were not called in the forward pass",
                                  "watch layers that forward() uses, or pass a forward= that does")
            for name in names:
                chunks[name].append(current[name])
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
    return {name: parts[0] if len(parts) == 1 else torch.cat(parts) for name, parts in chunks.items()}
