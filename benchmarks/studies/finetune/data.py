"""The fine-tuning study's tasks: source and target datasets built from a task spec.

A task spec is ``{dataset, classes, labels}`` (benchmarks/configs/finetune/*.yaml). Source and target
runs never share a training image (the training split is cut in two halves by ``source.split_seed``);
every task is normalised with the source's pixel statistics; labels are relabelled as the spec says
(clean, permuted on every split, noise on train and val only so test accuracy measures the clean task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from torch.utils.data import Dataset

from benchmarks.core.errors import UserError, unknown_name
from benchmarks.studies.finetune.protocol import DATASETS, FULLSCALE
from datamodules.fashion_mnist import ArrayDataModule


@dataclass
class TaskData:
    """Train/val/test datasets of one task (labels 0..num_classes-1) and what their labels are."""

    datasets: dict[str, Dataset]
    num_classes: int
    label_agreement: float  # measured fraction of training labels equal to the true ones


class TaskDataModule(ArrayDataModule):
    """The seeded loaders of the shared ArrayDataModule over one task's datasets."""

    def __init__(self, task: TaskData, seed: int, batch_size: int) -> None:
        super().__init__(seed=seed, batch_size=batch_size)
        self.task = task
        self.num_classes = task.num_classes

    def build_datasets(self) -> dict[str, Dataset]:
        return self.task.datasets


def _remap(labels: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of examples of ``classes`` and their labels remapped to 0..k-1 in the given order."""
    remap = np.full(int(max(labels.max(), max(classes))) + 1, -1, dtype=np.int64)
    remap[list(classes)] = np.arange(len(classes))
    keep = np.flatnonzero(remap[labels] >= 0)
    return keep, remap[labels[keep]]


@lru_cache(maxsize=2)
def digits_images(image_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled 8x8 digits (1,797), upsampled bilinearly to ``image_size``, uint8 (cached)."""
    from datamodules.digits import load_digits_images

    return load_digits_images(image_size)


def _fullscale_arrays(name: str, split: str, data_root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 / SVHN as uint8 ``[N,32,32,3]`` arrays from the data root (torchvision layout)."""
    from datamodules import fullscale

    if name == "cifar10":
        data = fullscale.load_cifar10(data_root, train=split == "train")
        return np.asarray(data.data), np.asarray(data.targets, dtype=np.int64)
    data = fullscale.load_svhn(data_root, split=split)
    return np.ascontiguousarray(np.asarray(data.data).transpose(0, 2, 3, 1)), np.asarray(data.labels, dtype=np.int64)


def dataset_split(name: str, split: str, image_size: int,
                  data_root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of one split of a dataset (uint8 [N,H,W] or [N,H,W,C], int64)."""
    if name == "fashion_mnist":
        from datamodules.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(split)
    if name == "digits":
        return digits_images(image_size)
    if name in FULLSCALE:
        return _fullscale_arrays(name, split, data_root)
    raise unknown_name("dataset", name, DATASETS)


def class_pool(name: str, classes: Sequence[int], role: str, split: str, *, image_size: int,
               split_seed: int, data_root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The examples of ``classes`` a role may use: source and target runs never share training images.

    The training split is cut in two halves by ``split_seed``: the source draws from the first,
    targets from the second, so a same-domain target holds genuinely new examples. A dataset
    without a test split (digits) sets 45% of the chosen classes aside as test.
    """
    images, labels = dataset_split(name, "train" if name == "digits" else split, image_size, data_root)
    if name == "digits":
        keep, remapped = _remap(labels, classes)
        order = np.random.default_rng(split_seed).permutation(len(keep))
        n_test = int(0.45 * len(keep))
        chosen = np.sort(order[:n_test] if split == "test" else order[n_test:])
        return images[keep[chosen]], remapped[chosen]
    order = np.random.default_rng(split_seed).permutation(len(labels))
    if split == "train":
        half = len(labels) // 2
        chosen = order[:half] if role == "source" else order[half:]
    else:
        chosen = np.arange(len(labels))
    chosen = np.sort(chosen)
    keep, remapped = _remap(labels[chosen], classes)
    return images[chosen[keep]], remapped


def _draw(n: int, pool: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if n > pool:
        raise UserError(f"{what} asks for {n} examples but only {pool} are available",
                        f"lower it to at most {pool} (--set ...n_train / n_val / n_test)")
    return np.sort(rng.permutation(pool)[:n])


@lru_cache(maxsize=4)
def normalisation(name: str, classes: tuple[int, ...], image_size: int, split_seed: int,
                  data_root: str | None) -> tuple[float, float]:
    """Pixel mean/std of the source pool: every task is normalised like the source (like ImageNet stats)."""
    from datamodules.fashion_mnist import pixel_stats

    images, _ = class_pool(name, classes, "source", "train", image_size=image_size, split_seed=split_seed,
                           data_root=data_root)
    return pixel_stats(images)


def build_task(spec: dict, sizes: dict, *, role: str, seed: int, image_size: int, split_seed: int,
               norm: tuple[float, float], data_root: str | None = None) -> TaskData:
    """Datasets of a task spec ``{dataset, classes, labels}`` with ``sizes`` ``{n_train, n_val, n_test}``.

    Examples are drawn with ``seed``; labels are relabelled as ``spec['labels']`` says (clean,
    permuted on every split, noise on train and val only so test accuracy measures the clean task).
    """
    from datamodules.fashion_mnist import ImageArrayDataset
    from datamodules.label_transforms import parse_label_spec, relabel

    name, classes = spec["dataset"], [int(c) for c in spec["classes"]]
    kind, _ = parse_label_spec(spec.get("labels", "clean"))
    rng = np.random.default_rng(seed)
    mean, std = norm
    n_train, n_val, n_test = int(sizes["n_train"]), int(sizes["n_val"]), int(sizes["n_test"])
    images, labels = class_pool(name, classes, role, "train", image_size=image_size, split_seed=split_seed,
                                data_root=data_root)
    picked = _draw(n_train + n_val, len(labels), rng, f"{name} train+val")
    picked = rng.permutation(picked)
    parts = {"train": picked[:n_train], "val": picked[n_train:]}
    datasets: dict[str, Dataset] = {
        split: ImageArrayDataset(images[np.sort(idx)], labels[np.sort(idx)], mean, std)
        for split, idx in parts.items()
    }
    test_images, test_labels = class_pool(name, classes, role, "test", image_size=image_size,
                                          split_seed=split_seed, data_root=data_root)
    test_idx = _draw(n_test, len(test_labels), rng, f"{name} test")
    datasets["test"] = ImageArrayDataset(test_images[test_idx], test_labels[test_idx], mean, std)
    k = len(classes)
    label_spec = spec.get("labels", "clean")
    relabelled_splits = ("train", "val", "test") if kind == "permuted" else ("train", "val")
    for split in relabelled_splits:  # one permutation for every split; independent noise draws per split
        split_seed_ = seed if kind == "permuted" else seed + 1000 * ("train", "val").index(split)
        datasets[split] = relabel(datasets[split], label_spec, k, seed=split_seed_)
    train = datasets["train"]
    agreement = float(train.agreement()) if hasattr(train, "agreement") else 1.0
    return TaskData(datasets=datasets, num_classes=k, label_agreement=agreement)


def datamodule(task: TaskData, seed: int, batch_size: int) -> TaskDataModule:
    return TaskDataModule(task, seed, batch_size)
