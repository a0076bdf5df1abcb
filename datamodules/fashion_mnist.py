"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, and the in-memory DataModule base.

``load_fashion_mnist`` decodes the IDX .gz files once and caches the arrays as .npy under
``cache_dir("fashion_mnist")``. ``FashionMNISTDataModule`` serves class subsets (labels remapped to
0..k-1, so two disjoint subsets make a source/target pair), subsampling, a seeded validation split,
normalisation, an input transform (block shuffle) and a label transform (noise, permutation).

``ArrayDataModule`` / ``ImageArrayDataset`` (the base the other embedded DataModules share) live here
because this is the first and simplest of them: images stay uint8 in memory and are converted per item.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from analysis.files import atomic_write
from datamodules.paths import cache_dir, read_cache
from datamodules.samplers import EpochSeededRandomSampler

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS = ("train", "val", "test")

InputTransform = Callable[[torch.Tensor], torch.Tensor]
LabelTransform = Callable[[np.ndarray, str], np.ndarray]


# --------------------------------------------------------------------------------------------- helpers
def read_idx(path: Path) -> np.ndarray:
    """Decode one (gzipped) IDX file: big-endian header, then the raw array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {raw[:4]!r}); is it corrupted?")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}; use one of {list(allowed)}")
    return split


# --------------------------------------------------------------------------------------------- loading
def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``(uint8 images [N,28,28], int64 labels [N])`` for ``split`` in {"train", "test"}.

    Reads the Debian IDX files (or ``root``); the decoded arrays are cached as one .npz (CRC-checked as
    read), keyed by the source files' size and mtime, so later calls take milliseconds.
    """
    check_split(split, ("train", "test"))
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    sources = [folder / name for name in FASHION_MNIST_FILES[split]]
    missing = [str(p) for p in sources if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {missing}. Install the Debian package "
            f"(`sudo apt-get install dataset-fashion-mnist`) or pass root= a folder holding "
            f"{list(FASHION_MNIST_FILES[split])}"
        )
    stamp = "-".join(f"{p.stat().st_size}x{int(p.stat().st_mtime)}" for p in sources)
    path = cache_dir("fashion_mnist") / f"{split}-{stamp}.npz"
    cached = read_cache(path, _read_arrays)
    if cached is not None:
        return cached
    images = read_idx(sources[0])
    labels = read_idx(sources[1]).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{sources[0]} has {len(images)} images but {sources[1]} {len(labels)} labels")
    atomic_write(path, lambda tmp: np.savez(tmp, images=images, labels=labels))
    return images, labels


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["images"], data["labels"]


@lru_cache(maxsize=4)
def fashion_mnist_stats(root: str | None = None) -> tuple[float, float]:
    """Mean and std of the training pixels in [0, 1] (the normalisation constants)."""
    images, _ = load_fashion_mnist("train", root)
    return pixel_stats(images)


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of uint8 pixels scaled to [0, 1], from exact integer sums (chunked, no big copies)."""
    values = np.ascontiguousarray(images, dtype=np.uint8).ravel()
    total, squares = 0, 0
    for start in range(0, values.size, 1 << 22):
        chunk = values[start : start + (1 << 22)].astype(np.uint64)
        total += int(chunk.sum(dtype=np.uint64))
        squares += int(np.dot(chunk, chunk))
    count = max(values.size, 1)
    mean = total / count
    var = max(squares / count - mean**2, 0.0)
    return mean / 255.0, float(np.sqrt(var)) / 255.0


# --------------------------------------------------------------------------------------------- base
class ImageArrayDataset(Dataset):
    """uint8 images ``[N,H,W]`` or ``[N,H,W,C]`` kept in memory, returned as normalised float ``[C,H,W]``.

    Item ``i`` is ``(image, label)``; ``input_transform`` (if any) is applied after normalisation.
    ``labels`` is public (int64 tensor) so few-shot samplers can index classes without loading images.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
        input_transform: InputTransform | None = None,
    ) -> None:
        images = torch.as_tensor(np.asarray(images))
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}; scale them to 0..255 first")
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        self.images = images.contiguous()
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        channels = self.images.shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand(channels, 1, 1) * 255.0
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand(channels, 1, 1) * 255.0
        self.input_transform = input_transform

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> torch.Tensor:
        x = (self.images[index].float() - self.mean) / self.std
        return self.input_transform(x) if self.input_transform is not None else x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(index), self.labels[index]


class RepeatedDataset(Dataset):
    """``dataset`` cycled to ``length`` items (item i is ``dataset[i % len(dataset)]``)."""

    def __init__(self, dataset: Dataset, length: int) -> None:
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


def repeat_to_length(dataset: Dataset, length: int) -> Dataset:
    """``dataset`` itself when it has at least ``length`` items, else whole repeats of it reaching ``length``."""
    n = len(dataset)
    if n == 0 or n >= length:
        return dataset
    return RepeatedDataset(dataset, -(-length // n) * n)


class ArrayDataModule(L.LightningDataModule):
    """Shared plumbing of the embedded DataModules: seeded loaders, label transform, probe batch.

    Subclasses implement ``build_datasets() -> {"train": ds, "val": ds, "test": ds}`` and set
    ``num_classes`` and ``image_shape``. The train loader's order depends only on ``seed`` and the epoch.
    ``min_train_batches`` repeats a small training set so that one epoch is at least that many batches:
    runs at different label fractions then take the same number of optimiser steps per epoch.
    """

    num_classes: int
    image_shape: tuple[int, ...]

    def __init__(
        self,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        input_transform: InputTransform | None = None,
        label_transform: LabelTransform | None = None,
        min_train_batches: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if min_train_batches < 0:
            raise ValueError(f"min_train_batches={min_train_batches} must be >= 0 (0 = one pass over the data)")
        self.min_train_batches = min_train_batches
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.input_transform = input_transform
        self.label_transform = label_transform
        self.datasets: dict[str, Dataset] | None = None

    def build_datasets(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is None:
            self.datasets = self.build_datasets()

    def transform_labels(self, labels: np.ndarray, split: str) -> np.ndarray:
        """Apply the ``label_transform`` hook to one split's label array and check its output."""
        labels = np.asarray(labels, dtype=np.int64)
        if self.label_transform is None:
            return labels
        out = np.asarray(self.label_transform(labels, split), dtype=np.int64)
        if out.shape != labels.shape or (len(out) and (out.min() < 0 or out.max() >= self.num_classes)):
            raise ValueError(
                f"label_transform returned labels of shape {out.shape} in range "
                f"[{out.min() if len(out) else '-'}, {out.max() if len(out) else '-'}] for split {split!r}; "
                f"it must return {labels.shape} labels in [0, {self.num_classes})"
            )
        return out

    def dataset(self, split: str) -> Dataset:
        check_split(split)
        self.setup()
        assert self.datasets is not None
        return self.datasets[split]

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        if split == "train":
            dataset = repeat_to_length(dataset, self.min_train_batches * self.batch_size)
        # the order depends only on (seed, epoch): a run resumed mid-training sees the same batches
        sampler = EpochSeededRandomSampler(len(dataset), self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def probe_batch(self, n: int = 500, split: str = "test"):
        """The first ``n`` items of ``split`` collated into one batch: a fixed probe for analyses."""
        dataset = self.dataset(split)
        n = min(n, len(dataset))
        return next(iter(DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=n)))


def seeded_split(n_items: int, n_first: int, n_second: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted index sets of sizes ``n_first`` and ``n_second`` (default: the rest), seeded."""
    order = np.random.default_rng(seed).permutation(n_items)
    rest = n_items - n_first if n_second is None else n_second
    return np.sort(order[:n_first]), np.sort(order[n_first : n_first + rest])


# --------------------------------------------------------------------------------------------- datamodule
class FashionMNISTDataModule(ArrayDataModule):
    """Fashion-MNIST (1 x 28 x 28) classification with class subsets, subsampling and a seeded val split.

    ``classes`` (e.g. ``[0, 1, 2, 3, 4]``) keeps those classes and remaps them, in the given order, to
    0..k-1; ``n_train`` subsamples the training set (after the validation examples are set aside);
    ``val_fraction`` of the training pool becomes validation; ``n_test`` caps the test set.
    """

    def __init__(
        self,
        seed: int = 0,
        batch_size: int = 128,
        classes: Sequence[int] | None = None,
        n_train: int | None = None,
        n_test: int | None = None,
        val_fraction: float = 0.1,
        normalize: bool = True,
        input_transform: InputTransform | None = None,
        label_transform: LabelTransform | None = None,
        num_workers: int = 0,
        root: str | None = None,
    ) -> None:
        super().__init__(seed, batch_size, num_workers, input_transform, label_transform)
        self.save_hyperparameters()
        classes = list(range(10)) if classes is None else [int(c) for c in classes]
        if not classes or len(set(classes)) != len(classes) or not all(0 <= c < 10 for c in classes):
            raise ValueError(f"classes={classes} must be distinct Fashion-MNIST class ids in 0..9 (or None for all)")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must lie in [0, 1)")
        self.classes = classes
        self.n_train, self.n_test, self.val_fraction = n_train, n_test, val_fraction
        self.normalize = normalize
        self.root = root
        self.num_classes = len(classes)
        self.image_shape = (1, 28, 28)
        self.split_indices: dict[str, np.ndarray] = {}

    @property
    def class_names(self) -> list[str]:
        return [FASHION_MNIST_CLASSES[c] for c in self.classes]

    def _select(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = load_fashion_mnist(split, self.root)
        remap = np.full(10, -1, dtype=np.int64)
        remap[self.classes] = np.arange(len(self.classes))
        keep = np.flatnonzero(remap[labels] >= 0)
        return images[keep], remap[labels[keep]]

    def build_datasets(self) -> dict[str, Dataset]:
        mean, std = fashion_mnist_stats(self.root) if self.normalize else (0.0, 1.0)
        pool_images, pool_labels = self._select("train")
        n_pool = len(pool_labels)
        n_val = int(round(self.val_fraction * (self.n_train if self.n_train is not None else n_pool)))
        n_train = self.n_train if self.n_train is not None else n_pool - n_val
        if n_train < 1 or n_train + n_val > n_pool:
            raise ValueError(
                f"n_train={self.n_train} with val_fraction={self.val_fraction} needs {n_train + n_val} "
                f"training images but classes {self.classes} have {n_pool}; lower n_train or val_fraction"
            )
        val_idx, train_idx = seeded_split(n_pool, n_val, n_train, self.seed)
        self.split_indices = {"train": train_idx, "val": val_idx}  # positions in the class-filtered pool
        test_images, test_labels = self._select("test")
        if self.n_test is not None:
            if not 1 <= self.n_test <= len(test_labels):
                raise ValueError(f"n_test={self.n_test} must lie in 1..{len(test_labels)} for classes {self.classes}")
            test_idx, _ = seeded_split(len(test_labels), self.n_test, 0, self.seed)
            test_images, test_labels = test_images[test_idx], test_labels[test_idx]
            self.split_indices["test"] = test_idx
        parts = {
            "train": (pool_images[train_idx], pool_labels[train_idx]),
            "val": (pool_images[val_idx], pool_labels[val_idx]),
            "test": (test_images, test_labels),
        }
        return {
            split: ImageArrayDataset(x, self.transform_labels(y, split), mean, std, self.input_transform)
            for split, (x, y) in parts.items()
        }
