"""Reproducible few-shot tasks (learn2learn) and the meta-learning DataModule."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import TensorDataset

from datamodules.tasks import FewShotDataModule, TaskBatch, fixed_tasks, make_task_dataset


def toy_dataset(n_classes: int = 12, per_class: int = 6) -> TensorDataset:
    """Image k of class c is filled with the value 100*c + k, so a pixel identifies its example."""
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    values = (100 * labels + torch.arange(per_class).repeat(n_classes)).float()
    return TensorDataset(values.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone(), labels)


def original_class(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0, 0, 0] // 100).long()


def test_task_shapes_and_consistent_relabelling():
    tasks = make_task_dataset(toy_dataset(), ways=5, shots=2, queries=3, num_tasks=20, seed=0)
    task = tasks[0]
    assert isinstance(task, TaskBatch)
    assert task.support_x.shape == (10, 1, 4, 4) and task.query_x.shape == (15, 1, 4, 4)
    assert task.support_y.dtype == torch.int64 and sorted(set(task.support_y.tolist())) == [0, 1, 2, 3, 4]
    for label in range(5):
        support_classes = set(original_class(task.support_x[task.support_y == label]).tolist())
        query_classes = set(original_class(task.query_x[task.query_y == label]).tolist())
        assert len(support_classes) == 1 and support_classes == query_classes
    assert torch.bincount(task.query_y).tolist() == [3] * 5
    # support and query examples are different images
    assert not set(task.support_x[:, 0, 0, 0].tolist()) & set(task.query_x[:, 0, 0, 0].tolist())


def test_tasks_depend_only_on_seed_and_index():
    a = make_task_dataset(toy_dataset(), 5, 1, 2, num_tasks=30, seed=7)
    b = make_task_dataset(toy_dataset(), 5, 1, 2, num_tasks=30, seed=7)
    c = make_task_dataset(toy_dataset(), 5, 1, 2, num_tasks=30, seed=8)
    random.seed(123)  # the caller's random state must neither matter nor be disturbed
    expected_next = random.Random(123).random()
    late_first = [b[i] for i in (29, 3, 0)]
    assert random.random() == expected_next
    for task_a, task_b in zip([a[i] for i in (29, 3, 0)], late_first):
        assert all(torch.equal(u, v) for u, v in zip(task_a, task_b))
    assert any(not torch.equal(a[i].support_x, c[i].support_x) for i in range(5))
    assert len({tuple(a[i].support_x.flatten().tolist()) for i in range(30)}) > 20


def test_fixed_tasks_are_a_fixed_list():
    first, second = fixed_tasks(toy_dataset(), 5, 1, queries=1, num_tasks=4), fixed_tasks(toy_dataset(), 5, 1, 1, 4)
    assert len(first) == 4 and all(torch.equal(u.query_x, v.query_x) for u, v in zip(first, second))
    assert first[0].query_x.shape == (5, 1, 4, 4)


def test_impossible_tasks_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="lower ways"):
        make_task_dataset(toy_dataset(n_classes=3), ways=5, shots=1, queries=1, num_tasks=1)
    with pytest.raises(ValueError, match="lower shots or queries"):
        make_task_dataset(toy_dataset(per_class=3), ways=2, shots=2, queries=2, num_tasks=1)
    with pytest.raises(IndexError):
        make_task_dataset(toy_dataset(), 2, 1, 1, num_tasks=3)[3]


@pytest.fixture(scope="module")
def glyph_tasks():
    dm = FewShotDataModule(ways=5, shots=1, queries=2, meta_batch_size=4, num_val_tasks=8, num_test_tasks=8)
    dm.setup()
    return dm


def test_glyph_meta_batches_have_the_documented_shapes(glyph_tasks):
    batch = next(iter(glyph_tasks.train_dataloader()))
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (4, 5, 1, 28, 28) and batch.support_y.shape == (4, 5)
    assert batch.query_x.shape == (4, 10, 1, 28, 28) and batch.query_y.shape == (4, 10)
    assert batch.support_x.dtype == torch.float32 and int(batch.query_y.max()) == 4
    assert len(list(glyph_tasks.val_dataloader())) == 2


def test_glyph_splits_are_disjoint_in_characters(glyph_tasks):
    labels = {s: set(glyph_tasks.class_datasets[s].labels.tolist()) for s in ("train", "val", "test")}
    assert not labels["train"] & labels["val"] and not labels["train"] & labels["test"]
    assert not labels["val"] & labels["test"]


def test_loaders_repeat_exactly_for_the_same_seed(glyph_tasks):
    again = FewShotDataModule(ways=5, shots=1, queries=2, meta_batch_size=4, num_val_tasks=8, num_test_tasks=8)
    first = next(iter(glyph_tasks.train_dataloader()))
    assert torch.equal(first.support_x, next(iter(again.train_dataloader())).support_x)
    tasks = glyph_tasks.analysis_tasks(num_tasks=3)
    assert len(tasks) == 3 and tasks[0].query_x.shape == (5, 1, 28, 28)
    assert torch.equal(tasks[1].support_x, glyph_tasks.analysis_tasks(num_tasks=3)[1].support_x)


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="glyphs"):
        FewShotDataModule(source="omnigot")
