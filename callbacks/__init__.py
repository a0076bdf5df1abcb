"""Callbacks that turn any LightningModule of the suite into an instrument.

- ``RepresentationSnapshot``: layer outputs on a fixed probe set at fit start, every k epochs/steps,
  fit end and on demand (``take``), in memory and as safetensors/npz files with a manifest.
- ``SimilarityTracker``: per-layer similarity with references (start, random init, other weights) over
  training, and layer x layer heatmaps, via any measure of ``similarity``.
- ``Interpolation`` / ``interpolation_curve``: loss and error along the line between two weight sets,
  optional BatchNorm recomputation, barrier height.
- ``ModuleCriticality`` / ``module_criticality``: how far each module can be rewound under noise.

A module names the layers to watch with ``default_watch_layers()`` or ``watch_layers``. Everything
reported goes to the W&B run of a ``WandbLogger`` (if any) and to files in the run directory, from
global rank 0; under DDP every rank computes the same thing and no callback communicates.
"""

from callbacks.criticality import (
    CriticalityResult,
    ModuleCriticality,
    ModuleCriticalityResult,
    criticality_value,
    module_criticality,
)
from callbacks.errors import CallbackConfigError
from callbacks.evaluation import evaluate, recompute_batchnorm
from callbacks.interpolation import Interpolation, InterpolationResult, barrier, interpolation_curve
from callbacks.layers import resolve_layers
from callbacks.probe import Probe, select_probe
from callbacks.references import (
    RandomInitReference,
    RepresentationsReference,
    StartReference,
    WeightsReference,
)
from callbacks.run_outputs import RunOutputs, atomic_write, find_wandb_run
from callbacks.similarity_tracker import SimilarityTracker
from callbacks.snapshot import RepresentationSnapshot, Snapshot, capture_representations

__all__ = [
    "CallbackConfigError",
    "CriticalityResult",
    "Interpolation",
    "InterpolationResult",
    "ModuleCriticality",
    "ModuleCriticalityResult",
    "Probe",
    "RandomInitReference",
    "RepresentationSnapshot",
    "RepresentationsReference",
    "RunOutputs",
    "SimilarityTracker",
    "Snapshot",
    "StartReference",
    "WeightsReference",
    "atomic_write",
    "barrier",
    "capture_representations",
    "criticality_value",
    "evaluate",
    "find_wandb_run",
    "interpolation_curve",
    "module_criticality",
    "recompute_batchnorm",
    "resolve_layers",
    "select_probe",
]
