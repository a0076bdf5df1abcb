"""Lightning wiring of the interpolation curve: the ``Interpolation`` callback and its reports.

The math (theta(lambda) = (1 - lambda) theta_a + lambda theta_b, evaluation, BatchNorm re-estimation,
barrier) is ``analysis.interpolation``; this module runs it at fit end (default: weights at fit start
-> final weights) and reports against lambda (W&B ``define_metric``), as JSON/CSV/PNG in the run
directory. Under DDP every rank computes the same curve on the same data (no collectives needed,
SyncBatchNorm stays consistent) and rank 0 reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer

from analysis.evaluation import Forward, LossFn, Unpack
from analysis.interpolation import InterpolationResult, chord, interpolation_curve, lambda_grid
from analysis.states import StateSource, clone_state
from callbacks.errors import CallbackConfigError, check_choice
from callbacks.plots import new_figure
from callbacks.run_outputs import RunOutputs


def interpolation_figure(result: InterpolationResult, title: str = "linear interpolation"):
    """Loss (and error) against lambda, the chord between the end points dashed, the barrier marked."""
    panels = [("loss", result.loss, result.loss_barrier, result.loss_barrier_lambda)]
    if result.error is not None:
        panels.append(("error", result.error, result.error_barrier, result.error_barrier_lambda))
    figure = new_figure(5.0 * len(panels), 3.8)
    for index, (label, values, height, at) in enumerate(panels, start=1):
        ax = figure.add_subplot(1, len(panels), index)
        lams = result.lambdas
        v0, v1 = values[lams.index(0.0)], values[lams.index(1.0)]
        ax.plot(lams, values, marker="o", markersize=3, label=label)
        ax.plot([0.0, 1.0], [v0, v1], linestyle="--", color="grey", label="linear between end points")
        base = chord(v0, v1, at)
        ax.annotate("", xy=(at, base + height), xytext=(at, base),
                    arrowprops={"arrowstyle": "<->", "color": "red"})
        ax.plot([at], [base + height], marker="x", color="red", label=f"barrier {height:.3g} at λ={at:.2f}")
        ax.set_xlabel("λ  (θ = (1-λ) θ_a + λ θ_b)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title + (" (BN statistics recomputed)" if result.bn_recomputed else ""))
    return figure


LoaderSpec = Iterable | str | Callable[[Trainer], Iterable]


def resolve_loader(spec: LoaderSpec | None, trainer: Trainer, what: str) -> Iterable | None:
    """A loader given directly, by a callable of the trainer, or as "train"/"val"/"test" of the datamodule."""
    if spec is None:
        return None
    if isinstance(spec, str):
        check_choice(what, spec, ("train", "val", "test"))
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise CallbackConfigError(f'{what}="{spec}" needs a datamodule, and the trainer has none',
                                      "pass a DataLoader instead")
        return getattr(datamodule, f"{spec}_dataloader")()
    if callable(spec) and not hasattr(spec, "__iter__"):
        return spec(trainer)
    return spec


class Interpolation(Callback):
    """At fit end, the interpolation curve between two weight sets (default: fit start -> fit end).

    Args:
        loader: evaluation data: a DataLoader, "train"/"val"/"test" of the datamodule, or ``f(trainer)``.
        state_a, state_b: "fit_start", "fit_end", or a state source (state dict, module, checkpoint path).
        lambdas: number of evenly spaced points on [0, 1] or an explicit grid containing 0 and 1.
        bn_loader: training data to recompute BatchNorm statistics at every lambda (None: do not).
        name: key prefix and file stem (``<name>/loss`` ... and ``<name>.json/.csv/.png``).
    """

    def __init__(self, loader: LoaderSpec, *, state_a: StateSource | str = "fit_start",
                 state_b: StateSource | str = "fit_end", lambdas: int | Sequence[float] = 11,
                 loss_fn: LossFn = F.cross_entropy, bn_loader: LoaderSpec | None = None,
                 bn_batches: int | None = 10, name: str = "interp", out_dir: str | Path | None = None,
                 unpack: Unpack | None = None, forward: Forward | None = None,
                 max_batches: int | None = None) -> None:
        super().__init__()
        self.loader, self.bn_loader, self.bn_batches = loader, bn_loader, bn_batches
        self.state_a, self.state_b, self.lambdas = state_a, state_b, lambda_grid(lambdas)
        self.loss_fn, self.name, self.out_dir = loss_fn, name, out_dir
        self.unpack, self.forward, self.max_batches = unpack, forward, max_batches
        self.result: InterpolationResult | None = None
        self._start_state: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "fit_start" in (self.state_a, self.state_b):
            self._start_state = clone_state(pl_module)

    def _state(self, spec: StateSource | str, pl_module: LightningModule) -> StateSource:
        if isinstance(spec, str) and spec == "fit_end":
            return clone_state(pl_module)
        if isinstance(spec, str) and spec == "fit_start":
            if self._start_state is None:
                raise CallbackConfigError("Interpolation has no fit-start weights (on_fit_start did not run)",
                                          "pass state_a=<state dict or checkpoint> explicitly")
            return self._start_state
        return spec

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = resolve_loader(self.loader, trainer, "loader")
        self.result = interpolation_curve(
            pl_module, self._state(self.state_a, pl_module), self._state(self.state_b, pl_module), loader,
            self.lambdas, self.loss_fn, resolve_loader(self.bn_loader, trainer, "bn_loader"),
            bn_batches=self.bn_batches, unpack=self.unpack, forward=self.forward,
            max_batches=self.max_batches)
        report_interpolation(RunOutputs(trainer, self.out_dir), self.result, self.name)


def report_interpolation(outputs: RunOutputs, result: InterpolationResult, name: str = "interp") -> None:
    """Log the curve against lambda, the barriers to the summary, and write JSON/CSV/PNG."""
    if not outputs.enabled:
        return
    step_key = f"{name}/lambda"
    keys = [f"{name}/loss"] + ([f"{name}/error"] if result.error is not None else [])
    outputs.define_curve(name, step_key, keys)
    for row in result.rows():
        outputs.log({f"{name}/{k}": v for k, v in row.items() if v is not None})
    outputs.summary({f"{name}/loss_barrier": result.loss_barrier,
                     **({f"{name}/error_barrier": result.error_barrier} if result.error is not None else {})})
    outputs.table(f"{name}/curve", result.rows())
    outputs.json(f"{name}.json", result.to_dict())
    outputs.csv(f"{name}.csv", result.rows())
    outputs.figure(f"{name}.png", interpolation_figure(result, title=name), wandb_key=f"{name}/plot")
