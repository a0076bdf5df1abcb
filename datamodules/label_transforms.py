"""Relabelled datasets for fine-tuning targets: a fixed class permutation, or label noise up to random labels.

Wrappers around any map-style dataset of ``(input, label, ...)`` items. The new labels are drawn
once, at construction, from a seed, so every epoch sees the same (possibly wrong) label for an
example, as in Zhang et al. (2017) "rethinking generalization". ``true_labels`` keeps the originals
so the claim of a wrapper can be measured (:func:`label_agreement`):

- :class:`PermutedLabels`: class ``c`` becomes ``permutation[c]`` for every example; by default the
  permutation is a derangement (no class keeps its label), so agreement with the truth is 0 while the
  task stays exactly as learnable as before;
- :class:`NoisyLabels`: each example independently, with probability ``noise``, gets a label drawn
  uniformly from all classes (symmetric noise, the draw may hit the truth); expected agreement
  ``1 - noise * (K - 1) / K``; ``noise=1`` gives random labels (agreement ``1/K``).

:func:`relabel` builds either from a spec string: ``"clean"``, ``"permuted"``, ``"noise-0.25"``,
``"random"``. The noise itself is ``datamodules.transforms.NoisyLabels`` (the DataModules'
``label_transform`` hook), so a wrapped dataset and a DataModule with that hook get the same labels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from datamodules.transforms import NoisyLabels as NoisyLabelHook

LABEL_SPECS = ("clean", "permuted", "noise-<p>", "random")
_NOISE = re.compile(r"^noise-(\d*\.?\d+)$")


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The int64 labels of a dataset: its ``labels``/``targets`` attribute, a TensorDataset's last tensor,
    a Subset of one of these, or (slow path) item ``[1]`` of every example."""
    if isinstance(dataset, RelabelledDataset):
        return dataset.labels.clone()
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    for attribute in ("labels", "targets"):
        value = getattr(dataset, attribute, None)
        if value is not None:
            return torch.as_tensor(np.asarray(value), dtype=torch.int64)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1].to(torch.int64)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)


def derangement(num_classes: int, seed: int = 0) -> np.ndarray:
    """A random permutation of ``range(num_classes)`` without fixed points (every class changes label)."""
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a label permutation needs at least 2 classes. "
                         "Fix: permute a target with 2 or more classes")
    rng = np.random.default_rng(seed)
    while True:
        permutation = rng.permutation(num_classes)
        if not np.any(permutation == np.arange(num_classes)):
            return permutation


def expected_agreement(noise: float, num_classes: int) -> float:
    """Expected fraction of labels left true by symmetric noise of rate ``noise`` over ``num_classes``."""
    return 1.0 - noise * (num_classes - 1) / num_classes


def label_agreement(labels: Sequence[int] | torch.Tensor, true_labels: Sequence[int] | torch.Tensor) -> float:
    """Fraction of examples whose label equals the true one."""
    labels, true_labels = torch.as_tensor(labels), torch.as_tensor(true_labels)
    if labels.shape != true_labels.shape or len(labels) == 0:
        raise ValueError(f"cannot compare {tuple(labels.shape)} labels with {tuple(true_labels.shape)} true "
                         "labels. Fix: pass two non-empty label vectors of the same length")
    return float((labels == true_labels).double().mean())


class RelabelledDataset(Dataset):
    """``dataset`` with labels replaced by ``labels`` (inputs and any extra item fields unchanged)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor, num_classes: int) -> None:
        self.dataset = dataset
        self.true_labels = dataset_labels(dataset)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.num_classes = num_classes
        if len(self.labels) != len(self.true_labels):
            raise ValueError(f"{len(self.labels)} new labels for {len(self.true_labels)} examples")
        low, high = (int(self.true_labels.min()), int(self.true_labels.max())) if len(self.labels) else (0, 0)
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels range over [{low}, {high}] but num_classes={num_classes}. "
                             "Fix: pass the dataset's class count (labels must be 0..num_classes-1)")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return (item[0], self.labels[index], *item[2:])

    def agreement(self) -> float:
        """Measured fraction of labels equal to the true ones."""
        return label_agreement(self.labels, self.true_labels)


class PermutedLabels(RelabelledDataset):
    """Every label ``c`` becomes ``permutation[c]`` (default: a seeded derangement)."""

    def __init__(self, dataset: Dataset, num_classes: int, seed: int = 0,
                 permutation: Sequence[int] | None = None) -> None:
        perm = derangement(num_classes, seed) if permutation is None else np.asarray(permutation)
        if sorted(perm.tolist()) != list(range(num_classes)):
            raise ValueError(f"{perm.tolist()} is not a permutation of 0..{num_classes - 1}. "
                             "Fix: pass each class id exactly once")
        self.permutation = perm.astype(np.int64)
        true = dataset_labels(dataset)
        super().__init__(dataset, torch.as_tensor(self.permutation)[true], num_classes)


class NoisyLabels(RelabelledDataset):
    """Each label, with probability ``noise``, replaced by a uniform draw over all classes (fixed by seed)."""

    def __init__(self, dataset: Dataset, num_classes: int, noise: float, seed: int = 0) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise={noise} must lie in [0, 1]. "
                             "Fix: 0 keeps labels clean, 1 gives random labels")
        self.noise = float(noise)
        hook = NoisyLabelHook(noise, num_classes, seed=seed, splits=("train",))
        true = dataset_labels(dataset)
        super().__init__(dataset, torch.as_tensor(hook(true.numpy(), "train")), num_classes)


def parse_label_spec(spec: str) -> tuple[str, float]:
    """``"clean"`` -> (clean, 0), ``"permuted"`` -> (permuted, 0), ``"noise-0.5"`` -> (noise, 0.5),
    ``"random"`` -> (noise, 1.0)."""
    spec = str(spec).strip()
    if spec in ("clean", "permuted"):
        return spec, 0.0
    if spec == "random":
        return "noise", 1.0
    match = _NOISE.match(spec)
    if match and 0.0 <= float(match.group(1)) <= 1.0:
        return "noise", float(match.group(1))
    from analysis.errors import did_you_mean

    hint = did_you_mean(spec, ["clean", "permuted", "random", "noise-0.5"])
    raise ValueError(f'unknown label spec "{spec}".{hint} Fix: use one of {", ".join(LABEL_SPECS)} '
                     "(p in [0, 1], e.g. noise-0.25)")


def relabel(dataset: Dataset, spec: str, num_classes: int, seed: int = 0) -> Dataset:
    """Wrap ``dataset`` as ``spec`` says (``clean`` returns it unchanged)."""
    kind, noise = parse_label_spec(spec)
    if kind == "clean":
        return dataset
    if kind == "permuted":
        return PermutedLabels(dataset, num_classes, seed)
    return NoisyLabels(dataset, num_classes, noise, seed)
