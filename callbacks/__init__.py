"""Callbacks that turn any LightningModule of the suite into an instrument.

- ``RepresentationSnapshot``: layer outputs on a fixed probe set at fit start, every k epochs/steps,
  fit end and on demand (``take``), in memory and as safetensors/npz files with a manifest.
- ``SimilarityTracker``: per-layer similarity with references (start, random init, other weights) over
  training, and layer x layer heatmaps, via any measure of ``similarity``.
- ``Interpolation``: loss and error along the line between two weight sets at fit end, optional
  BatchNorm recomputation, barrier height.
- ``ModuleCriticality``: how far each module can be rewound under noise, at fit end.

This package is only the Lightning wiring: the math these callbacks run (interpolation and barrier,
criticality, evaluation and BatchNorm re-estimation, representation capture, weight states, layer
names) is in ``analysis/``, which imports no Lightning; similarity measures are in ``similarity/``.

A module names the layers to watch with ``default_watch_layers()`` or ``watch_layers``. Everything
reported goes to the W&B run of a ``WandbLogger`` (if any) and to files in the run directory, from
global rank 0; under DDP every rank computes the same thing and no callback communicates.
"""

from callbacks.criticality import ModuleCriticality
from callbacks.errors import CallbackConfigError
from callbacks.interpolation import Interpolation
from callbacks.probe import Probe, select_probe
from callbacks.references import (
    RandomInitReference,
    RepresentationsReference,
    StartReference,
    WeightsReference,
)
from callbacks.run_outputs import RunOutputs, find_wandb_run
from callbacks.similarity_tracker import SimilarityTracker
from callbacks.snapshot import RepresentationSnapshot, Snapshot

__all__ = [
    "CallbackConfigError",
    "Interpolation",
    "ModuleCriticality",
    "Probe",
    "RandomInitReference",
    "RepresentationSnapshot",
    "RepresentationsReference",
    "RunOutputs",
    "SimilarityTracker",
    "Snapshot",
    "StartReference",
    "WeightsReference",
    "find_wandb_run",
    "select_probe",
]
