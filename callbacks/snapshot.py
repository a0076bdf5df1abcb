"""Representation snapshots: layer outputs of a model on a fixed probe set, at chosen moments.

``analysis.representations.capture_representations`` is the functional core (forward hooks, eval
mode, no grad, train flags restored). ``RepresentationSnapshot`` is the callback: it takes snapshots
at fit start, every k epochs or steps, at fit end and on demand (``take(module, tag)``), keeps them in
memory and/or writes them to ``<out_dir>/snapshots/`` (safetensors or npz, atomically) with a
``manifest.json``.

DDP: every rank runs the same probe through its own replica (no collective inside the callback, so
no rank can hang waiting for another); only global rank 0 writes files and logs, and listeners (the
similarity tracker) see every rank's snapshots but only rank 0 reports. Replicas hold the same weights;
non-synchronised BatchNorm buffers can differ per rank, and what is reported is rank 0's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from analysis.layers import resolve_layers
from analysis.representations import POOLINGS, Forward, capture_representations
from callbacks.errors import CallbackConfigError, check_choice
from callbacks.probe import Probe, select_probe
from callbacks.run_outputs import RunOutputs


@dataclass
class Snapshot:
    """Representations of the probe set at one moment of training."""

    tag: str
    epoch: int
    step: int
    moment: str  # "fit_start" | "epoch" | "step" | "fit_end" | "on_demand"
    representations: dict[str, torch.Tensor] = field(repr=False)
    file: str | None = None

    def shapes(self) -> dict[str, list[int]]:
        return {name: list(x.shape) for name, x in self.representations.items()}


class SnapshotListener(Protocol):
    """Notified by ``RepresentationSnapshot`` (e.g. ``SimilarityTracker``)."""

    def on_snapshot(self, snapshot: Snapshot, trainer: Trainer | None, module: nn.Module) -> None: ...

    def on_snapshots_end(self, latest: Snapshot, trainer: Trainer, module: nn.Module) -> None: ...


def _safe_tag(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).strip("-") or "snapshot"


class RepresentationSnapshot(Callback):
    """Take snapshots of named layers on a fixed probe set during training.

    Args:
        probe: inputs tensor, Dataset or DataLoader; None takes the datamodule's validation set at fit.
        layers: names or globs over ``named_modules()`` of the LightningModule; None asks the module
            (``default_watch_layers()`` / ``watch_layers``).
        probe_size, seed: how many probe examples, chosen by ``seed`` (the same every snapshot).
        pooling: "none" | "mean" | "flatten", or a mapping layer-name/glob -> pooling.
        at_fit_start, every_n_epochs, every_n_steps, at_fit_end: when to snapshot automatically.
        keep: how many of the latest snapshots stay in memory (None: all, 0: none).
        save: write each snapshot to ``<out_dir>/snapshots/`` with ``manifest.json``.
        file_format: "safetensors" or "npz".
        out_dir: run directory (default ``trainer.default_root_dir``).
        forward: ``forward(module, x)`` when ``module(x)`` is not how the module sees inputs.
        input_key: position or key of the input inside a dataset item.
    """

    def __init__(self, probe: Any = None, layers: Sequence[str] | str | None = None, *, probe_size: int = 500,
                 seed: int = 0, pooling: str | Mapping[str, str] = "flatten", batch_size: int = 250,
                 at_fit_start: bool = True, every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 at_fit_end: bool = True, keep: int | None = None, save: bool = True,
                 file_format: str = "safetensors", out_dir: str | Path | None = None,
                 forward: Forward | None = None, input_key: int | str = 0) -> None:
        super().__init__()
        if isinstance(pooling, str):
            check_choice("pooling", pooling, POOLINGS)
        else:
            for value in pooling.values():
                check_choice("pooling", value, POOLINGS)
        check_choice("file_format", file_format, ("safetensors", "npz"))
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and value < 1:
                raise CallbackConfigError(f"{name} must be >= 1 or None, got {value}",
                                          f"pass {name}=None to switch it off")
        self.probe_source, self.layer_spec = probe, layers
        self.probe_size, self.seed, self.pooling, self.batch_size = probe_size, seed, pooling, batch_size
        self.at_fit_start, self.every_n_epochs = at_fit_start, every_n_epochs
        self.every_n_steps, self.at_fit_end = every_n_steps, at_fit_end
        self.keep, self.save, self.file_format = keep, save, file_format
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.forward, self.input_key = forward, input_key
        self.probe: Probe | None = None
        self.layers: list[str] | None = None
        self.snapshots: list[Snapshot] = []
        self.manifest: list[dict] = []
        self._listeners: list[SnapshotListener] = []
        self._trainer: Trainer | None = None
        self._outputs: RunOutputs | None = None
        self._count = 0
        self._last_scheduled_step: int | None = None
        self._latest: Snapshot | None = None

    # -- wiring ------------------------------------------------------------------------------------
    def add_listener(self, listener: SnapshotListener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._outputs = RunOutputs(trainer, self.out_dir)
        if self.probe is None and self.probe_source is None:
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "val_dataloader"):
                raise CallbackConfigError("RepresentationSnapshot has no probe set and the trainer has no "
                                          "datamodule with val_dataloader()",
                                          "pass probe=<tensor|Dataset|DataLoader> to RepresentationSnapshot")
            self.probe_source = datamodule.val_dataloader()
        if self.layers is None:
            self.layers = resolve_layers(pl_module, self.layer_spec)

    def prepare(self, module: nn.Module) -> Probe:
        """Resolve the probe set (once) and the layers (if not yet); called by ``take``."""
        if self.probe is None:
            if self.probe_source is None:
                raise CallbackConfigError("no probe set yet", "pass probe=... or call take() after fit setup")
            self.probe = select_probe(self.probe_source, self.probe_size, self.seed, self.input_key)
        if self.layers is None:
            self.layers = resolve_layers(module, self.layer_spec)
        return self.probe

    # -- taking snapshots --------------------------------------------------------------------------
    def capture(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Representations of ``module`` on the probe set, with this callback's layers and pooling."""
        probe = self.prepare(module)
        return capture_representations(module, self.layers, probe.inputs, pooling=self.pooling,
                                       batch_size=self.batch_size, forward=self.forward)

    def take(self, module: nn.Module, tag: str, *, epoch: int | None = None, step: int | None = None,
             moment: str = "on_demand") -> Snapshot:
        """Snapshot ``module`` now (e.g. before/after a MAML inner step); returns the snapshot."""
        trainer = self._trainer
        if epoch is None:
            epoch = trainer.current_epoch if trainer is not None else 0
        if step is None:
            step = trainer.global_step if trainer is not None else 0
        snapshot = Snapshot(tag=tag, epoch=int(epoch), step=int(step), moment=moment,
                            representations=self.capture(module))
        self._count += 1
        if self.save:
            self._write(snapshot)
        self._latest = snapshot
        if self.keep != 0:
            self.snapshots.append(snapshot)
            if self.keep is not None:
                del self.snapshots[: max(0, len(self.snapshots) - self.keep)]
        for listener in self._listeners:
            listener.on_snapshot(snapshot, trainer, module)
        return snapshot

    @property
    def latest(self) -> Snapshot | None:
        return self._latest

    def _outputs_or_default(self) -> RunOutputs | None:
        if self._outputs is not None:
            return self._outputs
        return RunOutputs(None, self.out_dir) if self.out_dir is not None else None

    def _write(self, snapshot: Snapshot) -> None:
        outputs = self._outputs_or_default()
        if outputs is None or not outputs.enabled:
            return
        name = f"snapshots/{self._count:05d}_{_safe_tag(snapshot.tag)}.{self.file_format}"
        outputs.arrays(name, snapshot.representations)
        snapshot.file = name
        self.manifest.append({"file": name, "tag": snapshot.tag, "epoch": snapshot.epoch,
                              "step": snapshot.step, "moment": snapshot.moment, "layers": snapshot.shapes()})
        probe = self.probe
        outputs.json("snapshots/manifest.json", {
            "probe": {"size": len(probe), "seed": probe.seed, "indices": probe.indices} if probe else None,
            "pooling": self.pooling, "format": self.file_format, "snapshots": self.manifest})

    # -- Lightning hooks ---------------------------------------------------------------------------
    def _scheduled(self, trainer: Trainer, pl_module: LightningModule, tag: str, moment: str) -> None:
        self.take(pl_module, tag, moment=moment)
        self._last_scheduled_step = trainer.global_step

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_start:
            self._scheduled(trainer, pl_module, "fit_start", "fit_start")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if due and step != self._last_scheduled_step:
            self._scheduled(trainer, pl_module, f"step{step}", "step")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._scheduled(trainer, pl_module, f"epoch{trainer.current_epoch}", "epoch")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        latest = self._latest
        if self.at_fit_end and (latest is None or self._last_scheduled_step != trainer.global_step
                                or latest.moment == "on_demand"):
            latest = self.take(pl_module, "fit_end", moment="fit_end")
        if latest is not None:
            for listener in self._listeners:
                listener.on_snapshots_end(latest, trainer, pl_module)
