"""Module criticality (Chatterji et al. 2020; Neyshabur et al. 2020, study 4).

For one module i (a group of parameters, e.g. a block) and a point (alpha, sigma) of a grid, its weights
are moved to theta_i = (1 - alpha) theta0_i + alpha thetaf_i + u with Gaussian noise u, all other weights
(and all buffers) stay at thetaf, and the training error is averaged over ``draws`` noise draws.

criticality_i = min over grid points whose error stays within ``epsilon`` of the error at thetaf of
        alpha^2 ||thetaf_i - theta0_i||^2 / sigma^2.

Noise: ``noise="absolute"`` draws u ~ N(0, sigma^2 I) as in the definition; ``noise="relative"`` scales
each tensor's noise by the RMS of its thetaf values (sigma is then a fraction of the weight scale).
The same standard-normal draws are reused across the grid (common random numbers: smoother maps).

Minimum: the value is >= 0 and 0 is the least possible. It is reached whenever a passing point has
alpha^2 ||delta||^2 = 0: a module that can be rewound fully (alpha = 0), or one that did not move
(thetaf = theta0, every point is 0). At sigma = 0 the value is 0 if alpha^2 ||delta||^2 = 0 and +inf
otherwise; keep 0 in ``sigmas`` (the default does) so the point (alpha, 0) of an untouched module,
which restores thetaf exactly and therefore passes, gives it criticality 0 for sure. No passing point
at all gives +inf (written as null in JSON).

Plain PyTorch: the Lightning callback that runs this at fit end is ``callbacks.criticality``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.errors import ConfigError, check_choice
from analysis.evaluation import Forward, LossFn, Unpack, evaluate
from analysis.layers import parameter_groups, resolve_layers
from analysis.states import StateSource, detached_copy, load_into, load_state, state_on

DEFAULT_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_SIGMAS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)


def criticality_value(alpha: float, distance_sq: float, sigma: float) -> float:
    """alpha^2 ||delta||^2 / sigma^2, with 0 when the numerator is 0 and +inf for sigma = 0 otherwise."""
    numerator = alpha * alpha * distance_sq
    if numerator == 0.0:
        return 0.0
    return math.inf if sigma == 0.0 else numerator / (sigma * sigma)


@dataclass
class ModuleCriticalityResult:
    """One module's grid (rows: alphas, columns: sigmas) and its criticality."""

    module: str
    alphas: list[float]
    sigmas: list[float]
    distance_sq: float
    error: list[list[float]]
    loss: list[list[float]]
    values: list[list[float]]
    passes: list[list[bool]]
    criticality: float
    argmin: tuple[float, float] | None


@dataclass
class CriticalityResult:
    """All modules; ``reference_*`` are measured at thetaf, ``criterion`` is what ``epsilon`` bounds."""

    modules: dict[str, ModuleCriticalityResult]
    reference_error: float
    reference_loss: float
    epsilon: float
    criterion: str
    noise: str
    draws: int
    extra: dict[str, Any] = field(default_factory=dict)

    def criticality(self) -> dict[str, float]:
        return {name: m.criticality for name, m in self.modules.items()}

    def grid_rows(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.modules.values():
            for i, alpha in enumerate(m.alphas):
                for j, sigma in enumerate(m.sigmas):
                    rows.append({"module": m.module, "alpha": alpha, "sigma": sigma, "error": m.error[i][j],
                                 "loss": m.loss[i][j], "value": m.values[i][j], "passes": m.passes[i][j]})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_grid(values: Sequence[float], name: str) -> list[float]:
    grid = [float(v) for v in values]
    if not grid or any(v < 0 or not math.isfinite(v) for v in grid):
        example = list(DEFAULT_ALPHAS if name == "alphas" else DEFAULT_SIGMAS)
        raise ConfigError(f"{name} must be a non-empty list of finite values >= 0, got {grid}",
                          f"pass e.g. {name}={example}")
    return grid


@torch.no_grad()
def module_criticality(model: nn.Module, theta0: StateSource, thetaf: StateSource, loader: Iterable,
                       modules: Sequence[str] | None = None, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
                       sigmas: Sequence[float] = DEFAULT_SIGMAS, epsilon: float = 0.05,
                       noise: str = "absolute", draws: int = 3, seed: int = 0, criterion: str = "error",
                       loss_fn: LossFn = F.cross_entropy, unpack: Unpack | None = None,
                       forward: Forward | None = None, max_batches: int | None = None) -> CriticalityResult:
    """Criticality of each module of ``model`` (names or globs; None: the module's watch layers).

    ``loader`` should be training data (criticality bounds the training error); ``criterion`` "error"
    (top-1) or "loss" is what must stay within ``epsilon`` of its value at thetaf.
    """
    check_choice("noise", noise, ("absolute", "relative"))
    check_choice("criterion", criterion, ("error", "loss"))
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}", "pass draws=1 or more")
    alpha_grid, sigma_grid = check_grid(alphas, "alphas"), check_grid(sigmas, "sigmas")
    work = detached_copy(model)
    groups = parameter_groups(work, resolve_layers(work, modules))
    final, start = state_on(work, load_state(thetaf)), state_on(work, load_state(theta0))
    load_into(work, final)

    def measure() -> tuple[float, float]:
        loss, error = evaluate(work, loader, loss_fn, unpack=unpack, forward=forward, max_batches=max_batches)
        if criterion == "error" and error is None:
            raise ConfigError("the model's outputs are not class logits, so there is no top-1 error",
                              'pass criterion="loss"')
        return loss, (error if error is not None else math.nan)

    ref_loss, ref_error = measure()
    bound = (ref_error if criterion == "error" else ref_loss) + epsilon
    params = dict(work.named_parameters())
    results: dict[str, ModuleCriticalityResult] = {}
    for name, keys in groups.items():
        delta = {k: final[k] - start[k] for k in keys}
        distance_sq = float(sum((d.double() ** 2).sum() for d in delta.values()))
        scale = {k: final[k].double().pow(2).mean().sqrt().item() if noise == "relative" else 1.0
                 for k in keys}
        normals = []
        for d in range(draws):
            generator = torch.Generator().manual_seed(seed + d)
            normals.append({k: torch.randn(final[k].shape, generator=generator, dtype=final[k].dtype)
                            .to(final[k].device) for k in keys})
        shape = (len(alpha_grid), len(sigma_grid))
        error, loss = np.zeros(shape), np.zeros(shape)
        for i, alpha in enumerate(alpha_grid):
            base = {k: torch.lerp(start[k], final[k], alpha) for k in keys}
            for j, sigma in enumerate(sigma_grid):
                outcomes = []
                for normal in normals[: 1 if sigma == 0.0 else draws]:
                    for k in keys:
                        params[k].copy_(base[k] + (sigma * scale[k]) * normal[k] if sigma else base[k])
                    outcomes.append(measure())
                loss[i, j] = float(np.mean([o[0] for o in outcomes]))
                error[i, j] = float(np.mean([o[1] for o in outcomes]))
        for k in keys:
            params[k].copy_(final[k])
        observed = error if criterion == "error" else loss
        values = [[criticality_value(a, distance_sq, s) for s in sigma_grid] for a in alpha_grid]
        passes = (observed <= bound).tolist()
        candidates = [(values[i][j], alpha_grid[i], sigma_grid[j]) for i in range(shape[0])
                      for j in range(shape[1]) if passes[i][j]]
        best = min(candidates, key=lambda c: c[0], default=None)
        results[name] = ModuleCriticalityResult(
            module=name, alphas=alpha_grid, sigmas=sigma_grid, distance_sq=distance_sq, error=error.tolist(),
            loss=loss.tolist(), values=values, passes=passes,
            criticality=best[0] if best is not None else math.inf,
            argmin=(best[1], best[2]) if best is not None else None)
    return CriticalityResult(modules=results, reference_error=ref_error, reference_loss=ref_loss,
                             epsilon=epsilon, criterion=criterion, noise=noise, draws=draws)
