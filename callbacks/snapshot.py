"""Representation snapshots: layer outputs of a model on a fixed probe set, at chosen moments.

``capture_representations`` is the functional core (forward hooks, eval mode, no grad, train flags
restored). ``RepresentationSnapshot`` is the callback: it takes snapshots at fit start, every k epochs
or steps, at fit end and on demand (``take(module, tag)``), keeps them in memory and/or writes them to
``<out_dir>/snapshots/`` (safetensors or npz, atomically) with a ``manifest.json``.

DDP: every rank runs the same probe through its own replica (no collective inside the callback, so
no rank can hang waiting for another); only global rank 0 writes files and logs, and listeners (the
similarity tracker) see every rank's snapshots but only rank 0 reports. Replicas hold the same weights;
non-synchronised BatchNorm buffers can differ per rank, and what is reported is rank 0's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from callbacks.errors import CallbackConfigError, check_choice
from callbacks.layers import resolve_layers
from callbacks.probe import Probe, select_probe
from callbacks.run_outputs import RunOutputs

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
    import fnmatch

    for pattern, how in pooling.items():
        if pattern == layer or fnmatch.fnmatchcase(layer, pattern):
            return how
    return pooling.get("*", "none")


def _first_tensor(output: Any, layer: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, list | tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise CallbackConfigError(f'layer "{layer}" returns {type(output).__name__}, not a tensor',
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
        raise CallbackConfigError(f"batch_size must be at least 1, got {batch_size}", "pass batch_size >= 1")
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
                raise CallbackConfigError(f"layers {silent} were not called in the forward pass",
                                          "watch layers that forward() uses, or pass a forward= that does")
            for name in names:
                chunks[name].append(current[name])
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
    return {name: parts[0] if len(parts) == 1 else torch.cat(parts) for name, parts in chunks.items()}


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
