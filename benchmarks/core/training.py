"""Training helpers every study shares: keeping weights along training, the per-epoch resume checkpoint.

``KeepWeights`` saves a network's weights at chosen optimiser steps or epochs (``weights/step0000120.pt``,
``weights/epoch003.pt``), once per point (a resumed run does not rewrite them), from global rank 0, atomically;
``kept_weights`` lists them back by step or epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from benchmarks.core.runstore import atomic_save_state

_FORMATS = {"step": "step{:07d}.pt", "epoch": "epoch{:03d}.pt"}


def weight_file(directory: Path, point: int, unit: str = "step") -> Path:
    """Where KeepWeights keeps the weights of step (or epoch) ``point``."""
    return Path(directory) / _FORMATS[unit].format(int(point))


def kept_weights(directory: Path, unit: str = "step") -> dict[int, Path]:
    """The weight files KeepWeights wrote into ``directory``, by step (or epoch)."""
    prefix = _FORMATS[unit].split("{")[0]
    return {int(p.stem[len(prefix):]): p for p in sorted(Path(directory).glob(f"{prefix}*.pt"))}


class KeepWeights(Callback):
    """Save ``state(module)`` at the given optimiser steps (``unit="step"``, step 0 before the first batch) or
    after the given training epochs (``unit="epoch"``, epoch 0 before training; epoch k after k epochs)."""

    def __init__(self, directory: Path, at: Iterable[int], unit: str = "step",
                 state: Callable[[LightningModule], Mapping[str, torch.Tensor]] | None = None) -> None:
        if unit not in _FORMATS:
            raise ValueError(f"unit must be one of {', '.join(_FORMATS)}, got {unit!r}")
        self.directory, self.unit, self.at = Path(directory), unit, {int(a) for a in at}
        self.state = state or (lambda module: module.state_dict())

    def path(self, point: int) -> Path:
        return weight_file(self.directory, point, self.unit)

    def _keep(self, trainer: Trainer, module: LightningModule, point: int) -> None:
        if point in self.at and trainer.is_global_zero and not self.path(point).exists():
            atomic_save_state(self.path(point), dict(self.state(module)))

    def on_train_start(self, trainer: Trainer, module: LightningModule) -> None:  # after a resume's restore
        self._keep(trainer, module, trainer.global_step if self.unit == "step" else trainer.current_epoch)

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, *args) -> None:
        if self.unit == "step":
            self._keep(trainer, module, trainer.global_step)

    def on_train_epoch_end(self, trainer: Trainer, module: LightningModule) -> None:
        if self.unit == "epoch":
            self._keep(trainer, module, trainer.current_epoch + 1)


class EpochCheckpoint(ModelCheckpoint):
    """``last.ckpt`` after every ``every``-th training epoch and after the final one (the resume point)."""

    def __init__(self, directory: Path, every: int = 1) -> None:
        super().__init__(dirpath=directory, filename="last", save_top_k=1, every_n_epochs=1, save_last=False,
                         save_on_train_epoch_end=True, enable_version_counter=False)
        self.every = int(every)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        done = trainer.current_epoch + 1
        if done % self.every == 0 or (trainer.max_epochs is not None and done >= trainer.max_epochs):
            super().on_train_epoch_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if trainer.max_steps != -1:
            as_next_epoch_start(checkpoint)


def as_next_epoch_start(checkpoint: dict) -> None:
    """Make a checkpoint saved in ``on_train_epoch_end`` of step-bounded training (``max_steps``) resume at the
    start of the next epoch, as epoch-bounded training does.

    Lightning restores such a checkpoint as "restarting" inside the finished epoch; its epoch loop then waits for a
    validation that the epoch did not run (``check_val_every_n_epoch`` > 1) and trains one batch past the epoch's
    end, so the resumed run drifts from the uninterrupted one. Marking the epoch completed and the batch counters
    of the next epoch at zero is exactly the state between two epochs."""
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop:
        return
    epochs = loop["epoch_progress"]
    if epochs["total"]["processed"] != epochs["total"]["completed"] + 1:
        return  # not saved between the end of an epoch's batches and the epoch's completion
    for part in ("total", "current"):
        epochs[part]["completed"] = epochs[part]["processed"]
    batches = loop["epoch_loop.batch_progress"]
    batches["current"] = {key: 0 for key in batches["current"]}
    batches["is_last_batch"] = False


def epoch_checkpoint(directory: Path, every: int = 1) -> ModelCheckpoint:
    """``<directory>/last.ckpt`` after every ``every``-th training epoch and the last, also when validation runs
    less often (Lightning's default then saves only after validation, losing those epochs on a resume)."""
    return EpochCheckpoint(directory, every)


class LoggedMetricsInCheckpoint(Callback):
    """The metrics logged so far travel with every checkpoint and are back in ``trainer.callback_metrics`` when
    a run resumes, so a run resumed from its final checkpoint (a crash after training, before metrics.json)
    reports the same train/val metrics as the uninterrupted run instead of losing them."""

    KEY = "logged_metrics"

    def __init__(self) -> None:
        self._restored: dict[str, float] = {}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        checkpoint[self.KEY] = {name: float(value) for name, value in trainer.callback_metrics.items()
                                if isinstance(value, torch.Tensor) and value.numel() == 1}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        self._restored = dict(checkpoint.get(self.KEY, {}))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # after Lightning's reset
        for name, value in self._restored.items():
            trainer.callback_metrics.setdefault(name, torch.tensor(value))
        self._restored = {}


class EpochSeededRandomness(Callback):
    """Before the first training step of every epoch, seed torch (CPU and CUDA), numpy and Python's ``random``
    from (the run's seed, the epoch). A run resumed from an epoch's checkpoint then draws exactly the random
    numbers (dropout masks, random layers, augmentation in the steps) that the uninterrupted run drew, whatever
    validation, the restore or the data-loader set-up consumed before: the resumed run is the same run. (At the
    first batch, not at epoch start: Lightning builds the epoch's data-loader iterator, which draws from the
    global generator, before the epoch-start hook in one case and after it in the other.)"""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if batch_idx != 0:
            return
        import random

        import numpy as np

        epoch_seed = int.from_bytes(hashlib.sha256(f"{self.seed}/{trainer.current_epoch}".encode()).digest()[:4],
                                    "little")
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)  # all CUDA devices too
