"""Few-shot tasks (N-way K-shot) built with learn2learn, reproducibly, and the few-shot DataModule.

learn2learn's task transforms (NWays, KShots, LoadData, RemapLabels, ConsecutiveLabels) draw from
Python's global ``random``. ``FewShotTaskDataset`` makes task ``i`` a pure function of ``(seed, i)``:
it seeds ``random`` with ``f"{seed}/{i}"`` around the sampling (and restores the caller's state), so
tasks are identical across runs, DataLoader workers, shuffling and DDP ranks.

A task is a ``TaskBatch(support_x, support_y, query_x, query_y)``; support holds ``shots`` and query
``queries`` examples of each of ``ways`` classes, labelled 0..ways-1 (a random relabelling per task),
ordered class by class. The default collate stacks tasks into ``[B, ways*shots, C, H, W]`` etc.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Iterator
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from datamodules.fashion_mnist import ImageArrayDataset, pixel_stats
from datamodules.glyphs import build_glyphs
from datamodules.samplers import EpochSeededRandomSampler

FEW_SHOT_SOURCES = ("glyphs", "omniglot", "mini_imagenet")
OMNIGLOT_CLASS_SPLIT = (1100, 100, 423)  # learn2learn's omniglot benchmark: train/val/test characters


class TaskBatch(NamedTuple):
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


def _learn2learn():
    """Import learn2learn, hiding the gym deprecation notice its import prints to stderr."""
    with contextlib.redirect_stderr(io.StringIO()):
        import learn2learn
    return learn2learn


@contextlib.contextmanager
def seeded_python_random(seed: object) -> Iterator[None]:
    """Seed Python's global ``random`` for the block, then restore the previous state."""
    state = random.getstate()
    random.seed(str(seed))
    try:
        yield
    finally:
        random.setstate(state)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Labels of a (image, label) dataset, without loading images when it exposes them."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels, dtype=np.int64)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy().astype(np.int64)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


class _IntLabels(Dataset):
    """Returns python int labels, which learn2learn's RemapLabels looks up with ``list.index``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index][:2]
        return x, int(y)


class FewShotTaskDataset(Dataset):
    """``num_tasks`` reproducible few-shot tasks over a dataset of (image, label); item i is a TaskBatch."""

    def __init__(self, dataset: Dataset, ways: int, shots: int, queries: int, num_tasks: int, seed: int = 0) -> None:
        l2l = _learn2learn()
        labels = dataset_labels(dataset)
        classes, counts = np.unique(labels, return_counts=True)
        if ways < 2 or shots < 1 or queries < 0 or num_tasks < 1:
            raise ValueError(
                f"ways={ways} (>= 2), shots={shots} (>= 1), queries={queries} (>= 0) and "
                f"num_tasks={num_tasks} (>= 1) are out of range"
            )
        if len(classes) < ways:
            raise ValueError(
                f"{ways}-way tasks need >= {ways} classes but the dataset has {len(classes)}; "
                "lower ways or use a larger split"
            )
        eligible = classes[counts >= shots + queries]
        if len(eligible) < len(classes):
            raise ValueError(
                f"{len(classes) - len(eligible)} classes have fewer than shots+queries="
                f"{shots + queries} examples (smallest has {counts.min()}); lower shots or queries"
            )
        self.ways, self.shots, self.queries, self.num_tasks, self.seed = ways, shots, queries, num_tasks, seed
        labels_to_indices = {int(c): np.flatnonzero(labels == c).tolist() for c in classes}
        meta = l2l.data.MetaDataset(_IntLabels(dataset), labels_to_indices=labels_to_indices)
        transforms = [
            l2l.data.transforms.NWays(meta, n=ways),
            l2l.data.transforms.KShots(meta, k=shots + queries),
            l2l.data.transforms.LoadData(meta),
            l2l.data.transforms.RemapLabels(meta, shuffle=True),
            l2l.data.transforms.ConsecutiveLabels(meta),
        ]
        self.taskset = l2l.data.Taskset(
            meta, task_transforms=transforms, num_tasks=-1, task_collate=self.collate_support_first
        )

    def collate_support_first(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack a task's items (sorted class by class) with all support examples first, then queries.

        One stack instead of learn2learn's default collate plus two reshuffling copies: support and
        query are then plain views of it.
        """
        per_class = self.shots + self.queries
        support = [k for c in range(self.ways) for k in range(c * per_class, c * per_class + self.shots)]
        query = [k for c in range(self.ways) for k in range(c * per_class + self.shots, (c + 1) * per_class)]
        order = support + query
        x = torch.stack([torch.as_tensor(items[k][0]) for k in order])
        y = torch.tensor([int(items[k][1]) for k in order], dtype=torch.int64)
        return x, y

    def __len__(self) -> int:
        return self.num_tasks

    def __getitem__(self, index: int) -> TaskBatch:
        if not 0 <= index < self.num_tasks:
            raise IndexError(f"task {index} out of range 0..{self.num_tasks - 1}")
        with seeded_python_random(f"{self.seed}/{index}"):
            x, y = self.taskset.get_task(self.taskset.sample_task_description())
        n_support = self.ways * self.shots
        return TaskBatch(support_x=x[:n_support], support_y=y[:n_support], query_x=x[n_support:], query_y=y[n_support:])


def make_task_dataset(
    dataset: Dataset, ways: int, shots: int, queries: int, num_tasks: int, seed: int = 0
) -> FewShotTaskDataset:
    """``num_tasks`` ``ways``-way ``shots``-shot tasks with ``queries`` query examples per class."""
    return FewShotTaskDataset(dataset, ways, shots, queries, num_tasks, seed)


def fixed_tasks(
    dataset: Dataset, ways: int, shots: int, queries: int = 1, num_tasks: int = 50, seed: int = 1234
) -> list[TaskBatch]:
    """A fixed list of tasks (same for every call with the same arguments) for representation analyses."""
    tasks = make_task_dataset(dataset, ways, shots, queries, num_tasks, seed)
    return [tasks[i] for i in range(num_tasks)]


class FewShotDataModule(L.LightningDataModule):
    """Meta-learning batches of few-shot tasks from glyphs (default), Omniglot or miniImageNet.

    Splits are disjoint in classes: glyph alphabets (like Omniglot's), learn2learn's 1100/100/423
    Omniglot character split (a seeded shuffle), or miniImageNet's train/validation/test files.
    Every loader yields ``TaskBatch`` tuples of tensors ``support_x [B, ways*shots, C, H, W]``,
    ``support_y [B, ways*shots]``, ``query_x [B, ways*queries, C, H, W]``, ``query_y``.
    ``num_train_tasks`` is the pool the train loader shuffles over (cap epochs with limit_train_batches).
    """

    def __init__(
        self,
        source: str = "glyphs",
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        meta_batch_size: int = 16,
        num_train_tasks: int = 100_000,
        num_val_tasks: int = 100,
        num_test_tasks: int = 600,
        seed: int = 0,
        image_size: int | None = None,
        glyph_seed: int = 0,
        min_fonts: int = 4,
        instances_per_char: int = 20,
        data_root: str | None = None,
        download: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if source not in FEW_SHOT_SOURCES:
            raise ValueError(f"unknown few-shot source {source!r}; use one of {list(FEW_SHOT_SOURCES)}")
        self.source, self.ways, self.shots, self.queries = source, ways, shots, queries
        self.meta_batch_size = meta_batch_size
        self.num_tasks = {"train": num_train_tasks, "val": num_val_tasks, "test": num_test_tasks}
        self.seed, self.glyph_seed = seed, glyph_seed
        self.image_size = image_size or (84 if source == "mini_imagenet" else 28)
        self.glyph_kwargs = dict(min_fonts=min_fonts, instances_per_char=instances_per_char)
        self.data_root, self.download, self.num_workers = data_root, download, num_workers
        channels = 3 if source == "mini_imagenet" else 1
        self.image_shape = (channels, self.image_size, self.image_size)
        self.num_classes = ways
        self.class_datasets: dict[str, Dataset] | None = None
        self.task_datasets: dict[str, FewShotTaskDataset] = {}

    def build_class_datasets(self) -> dict[str, Dataset]:
        """The (image, label) dataset of each split, class-disjoint across splits."""
        from datamodules import fullscale

        if self.source == "glyphs":
            glyphs = build_glyphs(image_size=self.image_size, seed=self.glyph_seed, **self.glyph_kwargs)
            mean, std = pixel_stats(glyphs.images)
            out = {}
            for split in ("train", "val", "test"):
                index = glyphs.split_indices(split)
                out[split] = ImageArrayDataset(glyphs.images[index], glyphs.labels[index], mean, std)
            return out
        if self.source == "omniglot":
            omniglot = fullscale.load_omniglot(self.data_root, self.image_size, self.download)
            n_classes = len(omniglot.characters)
            order = np.random.default_rng(self.seed).permutation(n_classes)
            n_train = round(n_classes * OMNIGLOT_CLASS_SPLIT[0] / sum(OMNIGLOT_CLASS_SPLIT))
            n_val = round(n_classes * OMNIGLOT_CLASS_SPLIT[1] / sum(OMNIGLOT_CLASS_SPLIT))
            groups = {
                "train": order[:n_train],
                "val": order[n_train : n_train + n_val],
                "test": order[n_train + n_val :],
            }
            labels = omniglot.labels.numpy()
            return {s: Subset(omniglot, np.flatnonzero(np.isin(labels, g)).tolist()) for s, g in groups.items()}
        files = {"train": "train", "val": "validation", "test": "test"}
        return {s: fullscale.load_mini_imagenet(self.data_root, f, self.download) for s, f in files.items()}

    def setup(self, stage: str | None = None) -> None:
        if self.class_datasets is None:
            self.class_datasets = self.build_class_datasets()
            for k, split in enumerate(("train", "val", "test")):
                self.task_datasets[split] = make_task_dataset(
                    self.class_datasets[split],
                    self.ways,
                    self.shots,
                    self.queries,
                    self.num_tasks[split],
                    seed=self.seed * 3 + k,
                )

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        tasks = self.task_datasets[split]
        return DataLoader(
            tasks,
            batch_size=self.meta_batch_size,
            sampler=EpochSeededRandomSampler(len(tasks), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def analysis_tasks(
        self, num_tasks: int = 50, split: str = "test", queries: int = 1, seed: int = 1234
    ) -> list[TaskBatch]:
        """A fixed list of tasks from ``split`` (independent of the training seed) for analyses."""
        self.setup()
        assert self.class_datasets is not None
        return fixed_tasks(self.class_datasets[split], self.ways, self.shots, queries, num_tasks, seed)
