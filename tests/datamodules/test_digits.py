"""scikit-learn's bundled 8x8 digits as a tiny DataModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.digits import DigitsDataModule, load_digits_images, stratified_split


def test_all_1797_digits_load_as_uint8():
    images, labels = load_digits_images()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 255
    assert set(labels.tolist()) == set(range(10))
    assert load_digits_images(28)[0].shape == (1797, 28, 28)


def test_stratified_split_is_disjoint_complete_and_balanced():
    _, labels = load_digits_images()
    train, val, test = stratified_split(labels, (0.6, 0.15, 0.25), seed=0)
    assert len(train) + len(val) + len(test) == 1797
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    shares = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    assert np.allclose(shares, 0.25, atol=0.02)


def test_batches_shapes_and_seeds():
    dm = DigitsDataModule(batch_size=32, image_size=28)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dm.num_classes == 10 and 0 <= int(y.min()) and int(y.max()) <= 9
    same, other = DigitsDataModule(image_size=28), DigitsDataModule(image_size=28, seed=1)
    same.setup(), other.setup()
    assert torch.equal(same.dataset("test").images, dm.dataset("test").images)
    assert not torch.equal(other.dataset("test").images, dm.dataset("test").images)


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum < 1"):
        DigitsDataModule(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=">= 8"):
        DigitsDataModule(image_size=4)
