"""Loss and error along the straight line between two sets of weights, and the barrier on it.

theta(lambda) = (1 - lambda) theta_a + lambda theta_b for every floating state entry (``torch.lerp``,
exact at both ends). With ``bn_loader`` the BatchNorm statistics are re-estimated at every lambda
(interpolated running statistics belong to neither network). Barrier = max over lambda of
value(lambda) - [(1 - lambda) value(0) + lambda value(1)], for the loss and for the error
(Neyshabur et al. 2020, "What is being transferred in transfer learning?").

The callback ``Interpolation`` runs this at fit end (default: weights at fit start -> final weights)
and reports against lambda (W&B ``define_metric``), as JSON/CSV/PNG in the run directory. Under DDP
every rank computes the same curve on the same data (no collectives needed, SyncBatchNorm stays
consistent) and rank 0 reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from callbacks.errors import CallbackConfigError, check_choice
from callbacks.evaluation import Forward, LossFn, Unpack, evaluate, recompute_batchnorm
from callbacks.plots import new_figure
from callbacks.run_outputs import RunOutputs
from callbacks.states import (
    StateSource,
    clone_state,
    detached_copy,
    lerp_state,
    load_into,
    load_state,
    state_on,
)


def _lerp(a: float, b: float, w: float) -> float:
    """Linear interpolation exact at both ends and constant when a == b (same rule as torch.lerp)."""
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (1.0 - w)


def barrier(lambdas: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(height, lambda at the max) of values above the chord between the values at lambda=0 and 1."""
    lambdas, values = list(map(float, lambdas)), list(map(float, values))
    try:
        v0, v1 = values[lambdas.index(0.0)], values[lambdas.index(1.0)]
    except ValueError as err:
        raise CallbackConfigError("the lambda grid lacks 0 or 1, so the end points are unknown",
                                  "include 0.0 and 1.0 in lambdas, e.g. torch.linspace(0, 1, 11)") from err
    gaps = [v - _lerp(v0, v1, lam) for lam, v in zip(lambdas, values)]
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
            raise CallbackConfigError(f"need at least 2 lambda points, got {lambdas}", "pass lambdas >= 2")
        return [i / (lambdas - 1) for i in range(lambdas)]
    grid = sorted({float(v) for v in (lambdas.tolist() if isinstance(lambdas, torch.Tensor) else lambdas)})
    if 0.0 not in grid or 1.0 not in grid:
        raise CallbackConfigError(f"the lambda grid {grid[:5]}... lacks 0 or 1",
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
        base = _lerp(v0, v1, at)
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
