"""Lightning wiring of module criticality: the ``ModuleCriticality`` callback and its reports.

The math (Chatterji et al. 2020; Neyshabur et al. 2020, study 4: how far each module can be rewound
towards theta0 under noise while the training error stays within epsilon) is
``analysis.criticality``; this module runs it at fit end between the fit-start and final weights and
reports it (W&B curves and tables, JSON/CSV/PNG in the run directory).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer

from analysis.criticality import (
    BOUNDS,
    DEFAULT_ALPHAS,
    DEFAULT_SIGMAS,
    SEARCHES,
    CriticalityResult,
    check_grid,
    check_noise,
    module_criticality,
)
from analysis.evaluation import Forward, LossFn, Unpack
from analysis.states import StateSource, clone_state
from callbacks.errors import check_choice
from callbacks.interpolation import LoaderSpec, resolve_loader
from callbacks.plots import draw_heatmap, new_figure
from callbacks.run_outputs import RunOutputs


def criticality_figure(result: CriticalityResult, title: str = "module criticality"):
    """One alpha x sigma heatmap of the (noise-averaged) criterion per module; the argmin cell boxed."""
    names = list(result.modules)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = new_figure(4.6 * columns, 3.8 * rows)
    for index, name in enumerate(names, start=1):
        m = result.modules[name]
        ax = figure.add_subplot(rows, columns, index)
        grid = m.error if result.criterion == "error" else m.loss  # NaN: not evaluated (bisection)
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
        finite = math.isfinite(m.criticality)  # infinite: no alpha, sigma meets the bound; logged as null
        outputs.log({step_key: index, f"{name}/criticality": m.criticality if finite else None})
        outputs.summary({f"{name}/{module}": m.criticality if finite else None})
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
        bn_loader: training data to re-estimate BatchNorm statistics at every grid point (None: do not).
        name: key prefix and file stem (``<name>/...``, ``<name>.json/.csv/.png``).
        Other arguments: see ``module_criticality``.
    """

    def __init__(self, loader: LoaderSpec, *, modules: Sequence[str] | None = None,
                 theta0: StateSource | str = "fit_start", alphas: Sequence[float] = DEFAULT_ALPHAS,
                 sigmas: Sequence[float] = DEFAULT_SIGMAS, epsilon: float = 0.05, bound: str = "relative",
                 noise: str = "absolute",
                 draws: int = 3, seed: int = 0, criterion: str = "error", search: str = "grid",
                 bn_loader: LoaderSpec | None = None, bn_batches: int | None = None,
                 loss_fn: LossFn = F.cross_entropy,
                 name: str = "crit", out_dir: str | Path | None = None, unpack: Unpack | None = None,
                 forward: Forward | None = None, max_batches: int | None = None) -> None:
        super().__init__()
        check_noise(noise)  # only absolute noise is Chatterji et al.'s quantity
        check_choice("bound", bound, BOUNDS)
        check_choice("criterion", criterion, ("error", "loss"))
        check_choice("search", search, SEARCHES)
        self.loader, self.modules, self.theta0, self.bn_loader = loader, modules, theta0, bn_loader
        self.options = {"alphas": check_grid(alphas, "alphas"), "sigmas": check_grid(sigmas, "sigmas"),
                        "epsilon": epsilon, "bound": bound, "draws": draws, "seed": seed, "criterion": criterion,
                        "search": search, "bn_batches": bn_batches,
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
                                         bn_loader=resolve_loader(self.bn_loader, trainer, "bn_loader"),
                                         **self.options)
        self.result.extra["theta0"] = self.theta0 if isinstance(self.theta0, str) else "given"
        report_criticality(RunOutputs(trainer, self.out_dir), self.result, self.name)
