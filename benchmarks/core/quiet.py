"""Silence warnings that say nothing about the user's run, so the ones that do are seen.

Each entry names why it is harmless here; anything not listed still prints.
"""

from __future__ import annotations

import logging
import warnings

HARMLESS = (
    # Lightning sees `srun` on PATH (our CI has SLURM) although this process was not started by it.
    r"The `srun` command is available on your system but is not used",
    # torch 2.14 deprecates LeafSpec; Lightning 2.6 still uses it internally.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Every DataModule here is in memory: worker processes would only cost start-up time on 2 cores.
    r"The '\w+_dataloader' does not have many workers",
    # Frozen layers (head-only / lower-layers fine-tuning, frozen encoders) stay in eval mode on purpose, so
    # their batch-norm statistics stay bit-identical (tested in tests/modules/).
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # The MAML control classifier is validated by few-shot tasks after training, not by a val loader.
    r"You defined a `validation_step` but have no `val_dataloader`",
)


# Lightning's per-Trainer info lines ("GPU available: False", "TPU available", a litlogger advert, "fit
# stopped: max_epochs reached"): the runner prints one line per run instead. Warnings still show.
CHATTY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def silence_known_noise() -> None:
    for pattern in HARMLESS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
