"""Plain evaluation passes shared by the interpolation and criticality analyses.

``evaluate`` gives the mean loss and top-1 error over a loader (eval mode, no grad);
``recompute_batchnorm`` refreshes BatchNorm running statistics for a given set of weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from analysis.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Unpack = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]
Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def default_unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from a ``(x, y, ...)`` tuple/list or a dict with image/input/x and label/target/y."""
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        x = next((batch[k] for k in ("image", "input", "x") if k in batch), None)
        y = next((batch[k] for k in ("label", "target", "mask", "y") if k in batch), None)
        if x is not None and y is not None:
            return x, y
    raise ConfigError(f"cannot split a batch of type {type(batch).__name__} into inputs and targets",
                      "pass unpack=lambda batch: (inputs, targets)")


def top1_errors(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Number of wrong arg-max predictions for class logits (N, C) vs labels (N,), else None."""
    if outputs.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
        return (outputs.argmax(dim=1) != targets).sum()
    return None


def _device_of(model: nn.Module) -> torch.device:
    return next((t.device for t in model.state_dict().values()), torch.device("cpu"))


def _batches(loader: Iterable, max_batches: int | None) -> Iterable:
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            return
        yield batch


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: LossFn = F.cross_entropy, *,
             unpack: Unpack | None = None, forward: Forward | None = None,
             max_batches: int | None = None) -> tuple[float, float | None]:
    """Mean loss (``loss_fn`` returning a batch mean, weighted by batch size) and top-1 error (or None).

    Sums run in float64; train/eval flags of every submodule are restored afterwards.
    """
    unpack = unpack or default_unpack
    run = forward or (lambda m, x: m(x))
    device = _device_of(model)
    flags = {m: m.training for m in model.modules()}
    total_loss, total_errors, count, error_known = 0.0, 0, 0, True
    try:
        model.eval()
        for batch in _batches(loader, max_batches):
            x, y = unpack(batch)
            x, y = x.to(device), y.to(device)
            out = run(model, x)
            n = len(x)
            total_loss += float(loss_fn(out, y)) * n
            errors = top1_errors(out, y)
            if errors is None:
                error_known = False
            else:
                total_errors += int(errors)
            count += n
    finally:
        for module, flag in flags.items():
            module.training = flag
    if count == 0:
        raise ConfigError("the evaluation loader yielded no examples", "pass a non-empty DataLoader")
    return total_loss / count, (total_errors / count if error_known else None)


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers that keep running statistics (the ones eval mode depends on)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, loader: Iterable, num_batches: int | None = 10, *,
                        unpack: Unpack | None = None, forward: Forward | None = None) -> bool:
    """Reset BN running stats and re-estimate them as a cumulative average (momentum=None) over
    ``num_batches`` batches of ``loader``, BN layers in train mode, everything else in eval mode.

    Returns False (and changes nothing) when the model has no BN layer with running statistics.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return False
    unpack = unpack or default_unpack
    run = forward or (lambda m, x: m(x))
    device = _device_of(model)
    flags = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in layers]
    seen = 0
    try:
        model.eval()
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for batch in _batches(loader, num_batches):
            x, _ = unpack(batch)
            run(model, x.to(device))
            seen += 1
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        for module, flag in flags.items():
            module.training = flag
    if seen == 0:
        raise ConfigError("the BatchNorm loader yielded no batches",
                          "pass a non-empty bn_loader (a few batches of training data)")
    return True
