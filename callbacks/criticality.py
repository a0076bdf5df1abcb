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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from callbacks.errors import CallbackConfigError, check_choice
from callbacks.evaluation import Forward, LossFn, Unpack, evaluate
from callbacks.interpolation import LoaderSpec, resolve_loader
from callbacks.layers import parameter_groups, resolve_layers
from callbacks.plots import draw_heatmap, new_figure
from callbacks.run_outputs import RunOutputs
from callbacks.states import StateSource, clone_state, detached_copy, load_into, load_state, state_on

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


def _grid(values: Sequence[float], name: str) -> list[float]:
    grid = [float(v) for v in values]
    if not grid or any(v < 0 or not math.isfinite(v) for v in grid):
        example = list(DEFAULT_ALPHAS if name == "alphas" else DEFAULT_SIGMAS)
        raise CallbackConfigError(f"{name} must be a non-empty list of finite values >= 0, got {grid}",
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
        raise CallbackConfigError(f"draws must be >= 1, got {draws}", "pass draws=1 or more")
    alpha_grid, sigma_grid = _grid(alphas, "alphas"), _grid(sigmas, "sigmas")
    work = detached_copy(model)
    groups = parameter_groups(work, resolve_layers(work, modules))
    final, start = state_on(work, load_state(thetaf)), state_on(work, load_state(theta0))
    load_into(work, final)

    def measure() -> tuple[float, float]:
        loss, error = evaluate(work, loader, loss_fn, unpack=unpack, forward=forward, max_batches=max_batches)
        if criterion == "error" and error is None:
            raise CallbackConfigError("the model's outputs are not class logits, so there is no top-1 error",
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


def criticality_figure(result: CriticalityResult, title: str = "module criticality"):
    """One alpha x sigma heatmap of the (noise-averaged) criterion per module; the argmin cell boxed."""
    names = list(result.modules)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = new_figure(4.6 * columns, 3.8 * rows)
    for index, name in enumerate(names, start=1):
        m = result.modules[name]
        ax = figure.add_subplot(rows, columns, index)
        grid = m.error if result.criterion == "error" else m.loss
        draw_heatmap(ax, np.array(grid), [f"{a:g}" for a in m.alphas], [f"{s:g}" for s in m.sigmas],
                     cbar_label=f"training {result.criterion}", cmap="magma")
        if m.argmin is not None:
            i, j = m.alphas.index(m.argmin[0]), m.sigmas.index(m.argmin[1])
            ax.add_patch(_box(i, j))
        crit = "inf" if math.isinf(m.criticality) else f"{m.criticality:.3g}"
        ax.set_title(f"{name}: criticality {crit}", fontsize=9)
        ax.set_xlabel(f"σ ({result.noise} noise)")
        ax.set_ylabel("α  (θ0 → θf)")
    figure.suptitle(f"{title}: ε = {result.epsilon:g} on training {result.criterion}")
    return figure


def _box(i: int, j: int):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=2)


def report_criticality(outputs: RunOutputs, result: CriticalityResult, name: str = "crit") -> None:
    """Criticality per module (curve against module index, summary), grid tables, JSON/CSV/PNG files."""
    if not outputs.enabled:
        return
    step_key = f"{name}/module_index"
    outputs.define_curve(name, step_key, [f"{name}/criticality"])
    for index, (module, m) in enumerate(result.modules.items()):
        row: dict[str, Any] = {step_key: index}
        if math.isfinite(m.criticality):
            row[f"{name}/criticality"] = m.criticality
        outputs.log(row)
        outputs.summary({f"{name}/{module}": m.criticality if math.isfinite(m.criticality) else None})
    summary_rows = [{"module": mod, "criticality": m.criticality, "alpha": m.argmin[0] if m.argmin else None,
                     "sigma": m.argmin[1] if m.argmin else None, "distance_sq": m.distance_sq}
                    for mod, m in result.modules.items()]
    outputs.table(f"{name}/summary", summary_rows)
    outputs.table(f"{name}/grid", result.grid_rows())
    outputs.json(f"{name}.json", result.to_dict())
    outputs.csv(f"{name}.csv", result.grid_rows())
    outputs.figure(f"{name}.png", criticality_figure(result, title=name), wandb_key=f"{name}/heatmaps")


class ModuleCriticality(Callback):
    """At fit end, the criticality of each module between theta0 and the final weights.

    Args:
        loader: training data to measure the error on: a DataLoader, "train"/"val"/"test" of the
            datamodule, or ``f(trainer)``.
        modules: names or globs of submodules (None: the module's watch layers).
        theta0: "fit_start" (weights when fit began: the pretrained weights for P-T, the init for R-T)
            or a state source.
        name: key prefix and file stem (``<name>/...``, ``<name>.json/.csv/.png``).
        Other arguments: see ``module_criticality``.
    """

    def __init__(self, loader: LoaderSpec, *, modules: Sequence[str] | None = None,
                 theta0: StateSource | str = "fit_start", alphas: Sequence[float] = DEFAULT_ALPHAS,
                 sigmas: Sequence[float] = DEFAULT_SIGMAS, epsilon: float = 0.05, noise: str = "absolute",
                 draws: int = 3, seed: int = 0, criterion: str = "error", loss_fn: LossFn = F.cross_entropy,
                 name: str = "crit", out_dir: str | Path | None = None, unpack: Unpack | None = None,
                 forward: Forward | None = None, max_batches: int | None = None) -> None:
        super().__init__()
        check_choice("noise", noise, ("absolute", "relative"))
        check_choice("criterion", criterion, ("error", "loss"))
        self.loader, self.modules, self.theta0 = loader, modules, theta0
        self.options = {"alphas": _grid(alphas, "alphas"), "sigmas": _grid(sigmas, "sigmas"),
                        "epsilon": epsilon, "noise": noise, "draws": draws, "seed": seed, "criterion": criterion,
                        "loss_fn": loss_fn, "unpack": unpack, "forward": forward, "max_batches": max_batches}
        self.name, self.out_dir = name, out_dir
        self.result: CriticalityResult | None = None
        self._start_state: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if isinstance(self.theta0, str) and self.theta0 == "fit_start":
            self._start_state = clone_state(pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from_start = isinstance(self.theta0, str) and self.theta0 == "fit_start"
        theta0 = self._start_state if from_start else self.theta0
        loader = resolve_loader(self.loader, trainer, "loader")
        self.result = module_criticality(pl_module, theta0, clone_state(pl_module), loader, self.modules,
                                         **self.options)
        self.result.extra["theta0"] = self.theta0 if isinstance(self.theta0, str) else "given"
        report_criticality(RunOutputs(trainer, self.out_dir), self.result, self.name)
