"""Shut down what DDP starts: the default process group is destroyed at exit, while Python is alive.

Lightning destroys the process group at exit only for NCCL. A gloo group left alive until interpreter
finalization can abort the process ("terminate called without an active exception", SIGABRT): its
C++ worker threads still hold work objects whose tensors need the GIL of a dying interpreter (PyTorch
issue 190489). A DDP rank that aborts at exit fails its SLURM array task and breaks the ``afterok``
dependency of the next stage. Every LightningModule of the suite calls ``release_process_group_at_exit``
from ``setup``; the atexit handler runs before finalization and does nothing without a process group.
"""

from __future__ import annotations

import atexit

import torch.distributed as dist

_registered = False


def destroy_process_group_if_initialized() -> None:
    """Destroy the default process group (and every subgroup) if one exists; otherwise do nothing."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def release_process_group_at_exit() -> None:
    """Register (once per process) the exit handler that destroys the default process group."""
    global _registered
    if not _registered and dist.is_available():
        atexit.register(destroy_process_group_if_initialized)
        _registered = True
