"""Module criticality exactly as Chatterji, Neyshabur & Sedghi (ICLR 2020, Definition 3.1) define it.

For module i with initial weights theta0_i and final weights thetaf_i, and
theta_i(alpha) = (1 - alpha) theta0_i + alpha thetaf_i (every other module at thetaf):

    mu_i = min over 0 <= alpha <= 1, 0 < sigma <= 1 of  alpha^2 ||thetaf_i - theta0_i||_F^2 / sigma^2
           subject to  E_{u ~ N(0, sigma^2 I)} [ L_S(theta_i(alpha) + u, theta_{-i} = thetaf) ] <= epsilon

L_S is the training error (``criterion="error"``, top-1) or loss. The noise u is *absolute*: each
weight of the module gets independent N(0, sigma^2) noise, so sigma in the denominator is the noise
that was added (a per-tensor relative scale would make the value a different, module-dependent
quantity). The bound is ``epsilon`` itself (``bound="absolute"``, the definition) or, as a documented
variant, ``epsilon`` above the value at thetaf (``bound="relative"``). The expectation is the mean over
``draws`` noise draws; the same standard-normal draws are reused across the grid (common random
numbers), so the map is smooth in sigma.

BatchNorm: with ``bn_loader`` the running statistics of every BN layer are re-estimated on training
batches at every evaluated point (after the module has been moved and perturbed), as for interpolation
barriers: statistics stored at thetaf belong to neither the rewound nor the perturbed network. Without
it, the stored statistics are used as they are.

The minimum is searched on an (alpha, sigma) grid. ``search="grid"`` evaluates every point.
``search="bisect"`` finds, for each alpha, the largest passing sigma of the sorted sigma grid by
bisection (assuming the expected criterion does not fall as the noise grows, which common random
numbers make nearly exact), and skips alphas whose best possible value alpha^2 d^2 / max(sigma)^2
cannot beat the minimum found so far: a fine, log-spaced sigma grid costs log2 of its length per alpha,
so modules do not tie on a coarse grid. Unevaluated cells hold NaN (``passes`` None).

Special values: 0 when a passing point has alpha^2 ||delta||^2 = 0 (a module that can be fully rewound,
alpha = 0, or one that did not move); +inf when no grid point passes (written as null in JSON). At
sigma = 0 the value is 0 if alpha^2 ||delta||^2 = 0 and +inf otherwise.

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
from analysis.evaluation import Forward, LossFn, Unpack, evaluate, recompute_batchnorm
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
    passes: list[list[bool | None]]  # None: not evaluated (search="bisect")
    criticality: float
    argmin: tuple[float, float] | None


@dataclass
class CriticalityResult:
    """All modules; ``reference_*`` are measured at thetaf, ``criterion`` is what ``epsilon`` bounds
    (``bound``: absolute, or above the reference)."""

    modules: dict[str, ModuleCriticalityResult]
    reference_error: float
    reference_loss: float
    epsilon: float
    criterion: str
    bound: str
    draws: int
    search: str = "grid"
    bn_recomputed: bool = False
    noise: str = "absolute"  # u ~ N(0, sigma^2 I) on every weight of the module (the definition)
    extra: dict[str, Any] = field(default_factory=dict)

    def criticality(self) -> dict[str, float]:
        return {name: m.criticality for name, m in self.modules.items()}

    def grid_rows(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.modules.values():
            for i, alpha in enumerate(m.alphas):
                for j, sigma in enumerate(m.sigmas):
                    if m.passes[i][j] is None:
                        continue  # not evaluated (search="bisect")
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


SEARCHES = ("grid", "bisect")
NOISES = ("absolute", "relative")


def check_noise(noise: str) -> None:
    """Only absolute noise is Chatterji et al.'s quantity: a per-tensor relative scale is refused with the reason."""
    check_choice("noise", noise, NOISES)
    if noise == "relative":
        raise ConfigError('noise="relative" (sigma times each tensor\'s RMS) does not give Chatterji et al.\'s '
                          "criticality: the value divides by sigma^2, not by the noise that was added, and is not "
                          "comparable across modules", 'use noise="absolute" (u ~ N(0, sigma^2 I))')
BOUNDS = ("absolute", "relative")


def sigma_grid(low: float, high: float, points: int) -> list[float]:
    """``points`` log-spaced noise levels from ``low`` to ``high`` (both > 0), for ``search="bisect"``."""
    if not (0.0 < low < high) or points < 2:
        raise ConfigError(f"sigma grid low={low}, high={high}, points={points} needs 0 < low < high and points >= 2",
                          "pass e.g. low=0.001, high=1.0, points=25")
    ratio = (high / low) ** (1.0 / (points - 1))
    return [low * ratio**k for k in range(points - 1)] + [high]


@torch.no_grad()
def module_criticality(model: nn.Module, theta0: StateSource, thetaf: StateSource, loader: Iterable,
                       modules: Sequence[str] | None = None, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
                       sigmas: Sequence[float] = DEFAULT_SIGMAS, epsilon: float = 0.05,
                       bound: str = "relative", noise: str = "absolute", draws: int = 3, seed: int = 0,
                       criterion: str = "error",
                       search: str = "grid", bn_loader: Iterable | None = None, bn_batches: int | None = None,
                       loss_fn: LossFn = F.cross_entropy, unpack: Unpack | None = None,
                       forward: Forward | None = None, max_batches: int | None = None) -> CriticalityResult:
    """Criticality of each module of ``model`` (names or globs; None: the module's watch layers).

    ``loader`` should be training data (criticality bounds the training error); ``criterion`` "error"
    (top-1) or "loss" is what must stay at most ``epsilon`` (``bound="absolute"``, Chatterji et al.) or
    at most ``epsilon`` above its value at thetaf (``bound="relative"``). ``bn_loader``: training
    batches to re-estimate BatchNorm statistics at every evaluated point (``bn_batches`` of them).
    """
    check_noise(noise)
    check_choice("bound", bound, BOUNDS)
    check_choice("criterion", criterion, ("error", "loss"))
    check_choice("search", search, SEARCHES)
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}", "pass draws=1 or more")
    alpha_grid, sigma_list = check_grid(alphas, "alphas"), sorted(set(check_grid(sigmas, "sigmas")))
    work = detached_copy(model)
    groups = parameter_groups(work, resolve_layers(work, modules))
    final, start = state_on(work, load_state(thetaf)), state_on(work, load_state(theta0))
    load_into(work, final)

    def measure() -> tuple[float, float]:
        if bn_loader is not None:
            recompute_batchnorm(work, bn_loader, bn_batches, unpack=unpack, forward=forward)
        loss, error = evaluate(work, loader, loss_fn, unpack=unpack, forward=forward, max_batches=max_batches)
        if criterion == "error" and error is None:
            raise ConfigError("the model's outputs are not class logits, so there is no top-1 error",
                              'pass criterion="loss"')
        return loss, (error if error is not None else math.nan)

    ref_loss, ref_error = measure()
    limit = epsilon + (0.0 if bound == "absolute" else (ref_error if criterion == "error" else ref_loss))
    params = dict(work.named_parameters())
    def one_module(name: str, keys: Sequence[str]) -> ModuleCriticalityResult:
        """The grid (or bisection) of one module, every other module at thetaf."""
        delta = {k: final[k] - start[k] for k in keys}
        distance_sq = float(sum((d.double() ** 2).sum() for d in delta.values()))
        normals = []
        for d in range(draws):
            generator = torch.Generator().manual_seed(seed + d)
            normals.append({k: torch.randn(final[k].shape, generator=generator, dtype=final[k].dtype)
                            .to(final[k].device) for k in keys})
        shape = (len(alpha_grid), len(sigma_list))
        error, loss = np.full(shape, np.nan), np.full(shape, np.nan)
        passes: list[list[bool | None]] = [[None] * shape[1] for _ in range(shape[0])]

        def point(i: int, j: int) -> bool:
            """Evaluate grid point (alpha_i, sigma_j) once; True when its expected criterion is within the bound."""
            if passes[i][j] is None:
                alpha, sigma = alpha_grid[i], sigma_list[j]
                outcomes = []
                for normal in normals[: 1 if sigma == 0.0 else draws]:
                    for k in keys:
                        base = torch.lerp(start[k], final[k], alpha)
                        params[k].copy_(base + sigma * normal[k] if sigma else base)
                    outcomes.append(measure())
                loss[i, j] = float(np.mean([o[0] for o in outcomes]))
                error[i, j] = float(np.mean([o[1] for o in outcomes]))
                observed = error[i, j] if criterion == "error" else loss[i, j]
                passes[i][j] = bool(observed <= limit)
            return bool(passes[i][j])

        values = [[criticality_value(a, distance_sq, s) for s in sigma_list] for a in alpha_grid]
        if search == "grid":
            for i in range(shape[0]):
                for j in range(shape[1]):
                    point(i, j)
        else:
            best_value = math.inf
            for i in sorted(range(shape[0]), key=lambda r: alpha_grid[r]):
                if min(values[i]) >= best_value:
                    continue  # even the largest sigma cannot give a smaller value at this alpha
                if max(values[i]) == 0.0:  # alpha^2 d^2 = 0: any passing sigma gives 0, so try the smallest
                    if point(i, 0):
                        best_value = 0.0
                    continue
                lo, hi = -1, shape[1]  # invariant: sigma_lo passes (or lo = -1), sigma_hi fails (or hi = end)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if point(i, mid):
                        lo = mid
                    else:
                        hi = mid
                if lo >= 0:
                    best_value = min(best_value, values[i][lo])
        for k in keys:
            params[k].copy_(final[k])
        candidates = [(values[i][j], alpha_grid[i], sigma_list[j]) for i in range(shape[0])
                      for j in range(shape[1]) if passes[i][j]]
        best = min(candidates, key=lambda c: c[0], default=None)
        return ModuleCriticalityResult(
            module=name, alphas=alpha_grid, sigmas=sigma_list, distance_sq=distance_sq, error=error.tolist(),
            loss=loss.tolist(), values=values, passes=passes,
            criticality=best[0] if best is not None else math.inf,
            argmin=(best[1], best[2]) if best is not None else None)
    results = {name: one_module(name, keys) for name, keys in groups.items()}
    load_into(work, final)
    return CriticalityResult(modules=results, reference_error=ref_error, reference_loss=ref_loss,
                             epsilon=epsilon, criterion=criterion, bound=bound, draws=draws, search=search,
                             bn_recomputed=bn_loader is not None)
