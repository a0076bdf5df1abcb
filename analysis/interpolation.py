"""Loss and error along the straight line between two sets of weights, and the barrier on it.

theta(lambda) = (1 - lambda) theta_a + lambda theta_b for every floating state entry (``torch.lerp``,
exact at both ends). With ``bn_loader`` the BatchNorm statistics are re-estimated at every lambda
(interpolated running statistics belong to neither network). Barrier = max over lambda of
value(lambda) - [(1 - lambda) value(0) + lambda value(1)], for the loss and for the error
(Neyshabur et al. 2020, "What is being transferred in transfer learning?").

Plain PyTorch: the Lightning callback that runs this at fit end is ``callbacks.interpolation``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.errors import ConfigError
from analysis.evaluation import Forward, LossFn, Unpack, evaluate, recompute_batchnorm
from analysis.states import StateSource, detached_copy, lerp_state, load_into, load_state, state_on


def chord(v0: float, v1: float, lam: float) -> float:
    """(1 - lam) v0 + lam v1, exact at both ends and constant when v0 == v1 (same rule as torch.lerp)."""
    return v0 + lam * (v1 - v0) if lam < 0.5 else v1 - (v1 - v0) * (1.0 - lam)


def barrier(lambdas: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(height, lambda at the max) of values above the chord between the values at lambda=0 and 1."""
    lambdas, values = list(map(float, lambdas)), list(map(float, values))
    try:
        v0, v1 = values[lambdas.index(0.0)], values[lambdas.index(1.0)]
    except ValueError as err:
        raise ConfigError("the lambda grid lacks 0 or 1, so the end points are unknown",
                          "include 0.0 and 1.0 in lambdas, e.g. torch.linspace(0, 1, 11)") from err
    gaps = [v - chord(v0, v1, lam) for lam, v in zip(lambdas, values)]
    best = int(np.argmax(gaps))
    return gaps[best], lambdas[best]


@dataclass
class InterpolationResult:
    """The curve (one value per lambda) and its barriers; ``error`` is None when not classification."""

    lambdas: list[float]
    loss: list[float]
    error: list[float] | None
    loss_barrier: float
    loss_barrier_lambda: float
    error_barrier: float | None
    error_barrier_lambda: float | None
    bn_recomputed: bool

    def rows(self) -> list[dict[str, float | None]]:
        errors = self.error or [None] * len(self.lambdas)
        return [{"lambda": lam, "loss": loss, "error": err}
                for lam, loss, err in zip(self.lambdas, self.loss, errors)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lambda_grid(lambdas: int | Sequence[float] | torch.Tensor) -> list[float]:
    """An int K gives K evenly spaced points on [0, 1]; a sequence is sorted and de-duplicated."""
    if isinstance(lambdas, int):
        if lambdas < 2:
            raise ConfigError(f"need at least 2 lambda points, got {lambdas}", "pass lambdas >= 2")
        return [i / (lambdas - 1) for i in range(lambdas)]
    grid = sorted({float(v) for v in (lambdas.tolist() if isinstance(lambdas, torch.Tensor) else lambdas)})
    if 0.0 not in grid or 1.0 not in grid:
        raise ConfigError(f"the lambda grid {grid[:5]}... lacks 0 or 1",
                          "include both end points, e.g. torch.linspace(0, 1, 11)")
    return grid


def interpolation_curve(model: nn.Module, state_a: StateSource, state_b: StateSource, loader: Iterable,
                        lambdas: int | Sequence[float] | torch.Tensor = 11,
                        loss_fn: LossFn = F.cross_entropy, bn_loader: Iterable | None = None, *,
                        bn_batches: int | None = 10, unpack: Unpack | None = None,
                        forward: Forward | None = None,
                        max_batches: int | None = None) -> InterpolationResult:
    """Evaluate ``model`` at theta(lambda) for each lambda on ``loader`` (``model`` itself is not changed).

    ``bn_loader``: training batches used to re-estimate BatchNorm statistics at every lambda
    (``bn_batches`` of them); without it the interpolated running statistics are used as they are.
    """
    grid = lambda_grid(lambdas)
    work = detached_copy(model)
    a, b = state_on(work, load_state(state_a)), state_on(work, load_state(state_b))
    losses: list[float] = []
    errors: list[float | None] = []
    recomputed = False
    for lam in grid:
        load_into(work, lerp_state(a, b, lam))
        if bn_loader is not None:
            recomputed = recompute_batchnorm(work, bn_loader, bn_batches, unpack=unpack, forward=forward)
        loss, error = evaluate(work, loader, loss_fn, unpack=unpack, forward=forward, max_batches=max_batches)
        losses.append(loss)
        errors.append(error)
    loss_height, loss_at = barrier(grid, losses)
    if all(e is not None for e in errors):
        error_list: list[float] | None = [float(e) for e in errors]  # type: ignore[arg-type]
        error_height, error_at = barrier(grid, error_list)
    else:
        error_list, error_height, error_at = None, None, None
    return InterpolationResult(lambdas=grid, loss=losses, error=error_list, loss_barrier=loss_height,
                               loss_barrier_lambda=loss_at, error_barrier=error_height,
                               error_barrier_lambda=error_at, bn_recomputed=recomputed)


