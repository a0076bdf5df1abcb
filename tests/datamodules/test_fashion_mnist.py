"""Fashion-MNIST from the Debian IDX files, and its DataModule."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from datamodules.fashion_mnist import (
    FashionMNISTDataModule,
    load_fashion_mnist,
    pixel_stats,
    read_idx,
)
from datamodules.transforms import BlockShuffle, PermuteLabels


def test_read_idx_decodes_the_big_endian_header(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 4) + array.tobytes())
    assert np.array_equal(read_idx(path), array)


def test_the_real_splits_have_the_published_sizes_and_ten_balanced_classes():
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = load_fashion_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.dtype == np.int64
        assert np.array_equal(np.bincount(labels), np.full(10, n // 10))


def test_missing_files_name_the_path_and_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        load_fashion_mnist("train", root=tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="use one of"):
        load_fashion_mnist("validation")


def test_pixel_stats_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    mean, std = pixel_stats(images)
    assert mean == pytest.approx(images.mean() / 255, rel=1e-9)
    assert std == pytest.approx(images.std() / 255, rel=1e-9)


def make(**kwargs) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(**{"n_train": 600, "n_test": 300, "batch_size": 50, **kwargs})
    dm.setup()
    return dm


def test_batches_are_normalised_float_images_with_int64_labels():
    dm = make()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, *dm.image_shape) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < dm.num_classes == 10
    assert len(dm.dataset("train")) == 600 and len(dm.dataset("val")) == 60 and len(dm.dataset("test")) == 300
    whole = torch.stack([dm.dataset("train")[i][0] for i in range(600)])
    assert abs(float(whole.mean())) < 0.1 and abs(float(whole.std()) - 1) < 0.1


def test_a_class_subset_is_remapped_to_consecutive_labels():
    source, target = make(classes=[0, 1, 2, 3, 4]), make(classes=[9, 5])
    assert source.num_classes == 5 and target.num_classes == 2
    assert target.class_names == ["Ankle boot", "Sandal"]
    labels = target.dataset("test").labels
    assert set(labels.tolist()) == {0, 1}
    # label 0 of the target is class 9 (ankle boot): its images match the raw class-9 test images
    raw_images, raw_labels = load_fashion_mnist("test")
    boots = {raw_images[i].tobytes() for i in np.flatnonzero(raw_labels == 9)}
    first_zero = int(torch.nonzero(labels == 0)[0])
    assert target.dataset("test").images[first_zero, 0].numpy().tobytes() in boots


def test_same_seed_same_data_other_seed_other_split():
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    assert np.array_equal(a.split_indices["val"], b.split_indices["val"])
    xa, ya = next(iter(a.train_dataloader()))
    xb, yb = next(iter(b.train_dataloader()))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not np.array_equal(a.split_indices["val"], c.split_indices["val"])
    assert not set(a.split_indices["train"]) & set(a.split_indices["val"])


def test_input_transform_is_applied_after_normalisation():
    plain, shuffled = make(), make(input_transform=BlockShuffle(28, 7, seed=0))
    x, _ = plain.dataset("test")[0]
    assert torch.equal(shuffled.dataset("test")[0][0], BlockShuffle(28, 7, seed=0)(x))


def test_label_transform_hook_relabels_every_split_and_is_checked():
    plain, permuted = make(), make(label_transform=PermuteLabels(10, seed=0))
    perm = PermuteLabels(10, seed=0).permutation
    for split in ("train", "val", "test"):
        assert torch.equal(permuted.dataset(split).labels, torch.as_tensor(perm)[plain.dataset(split).labels])
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        make(label_transform=lambda labels, split: labels + 10)


def test_probe_batch_is_fixed():
    dm = make()
    x1, y1 = dm.probe_batch(64)
    x2, y2 = dm.probe_batch(64)
    assert x1.shape[0] == 64 and torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"classes": [3, 3]}, "distinct"), ({"classes": [10]}, "0..9"), ({"val_fraction": 1.0}, r"\[0, 1\)")],
)
def test_bad_arguments_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FashionMNISTDataModule(**kwargs)


def test_too_many_training_images_for_a_subset_says_so():
    with pytest.raises(ValueError, match="lower n_train"):
        make(classes=[0], n_train=6000)


def test_train_order_depends_only_on_seed_and_epoch():
    """So a run resumed mid-training sees the batches an uninterrupted run would have seen."""

    def first_labels(dm, epoch):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # Lightning does this at the start of every epoch
        return next(iter(loader))[1]

    a, b = make(seed=5), make(seed=5)
    assert torch.equal(first_labels(a, 3), first_labels(b, 3))
    assert not torch.equal(first_labels(a, 3), first_labels(a, 4))
