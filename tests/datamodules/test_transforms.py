"""Block shuffle (Neyshabur et al. 2020) and the label-transform hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datamodules.transforms import BlockShuffle, NoisyLabels, PermuteLabels, pixel_shuffle


def images(batch: int = 4, channels: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=25, deadline=None)
@given(block=st.sampled_from([1, 2, 4, 7, 14, 28]), channels=st.integers(1, 3), seed=st.integers(0, 10**6))
def test_block_shuffle_keeps_the_pixel_multiset_of_every_channel(block, channels, seed):
    x = images(channels=channels, seed=seed)
    y = BlockShuffle(28, block, seed)(x)
    assert y.shape == x.shape
    assert torch.equal(x.flatten(2).sort(-1).values, y.flatten(2).sort(-1).values)


@settings(max_examples=15, deadline=None)
@given(block=st.sampled_from([1, 2, 4, 7, 14]), seed=st.integers(0, 10**6))
def test_blocks_move_as_wholes(block, seed):
    """Every output block equals some input block, pixel for pixel."""
    shuffle = BlockShuffle(28, block, seed)
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 28, 28)
    y = shuffle(x)
    n = 28 // block
    in_blocks = x.view(n, block, n, block).permute(0, 2, 1, 3).reshape(n * n, -1)
    out_blocks = y.view(n, block, n, block).permute(0, 2, 1, 3).reshape(n * n, -1)
    assert torch.equal(out_blocks, in_blocks[shuffle.block_permutation])


def test_the_same_permutation_is_used_on_every_call_and_batch_shape():
    shuffle = BlockShuffle(28, 4, seed=3)
    train, test = images(seed=1), images(seed=2)
    assert torch.equal(shuffle(train), shuffle(train))
    # one image alone is shuffled exactly as inside a batch (so train and test get the same permutation)
    assert torch.equal(shuffle(test[2]), shuffle(test)[2])
    assert torch.equal(BlockShuffle(28, 4, seed=3)(train), shuffle(train))


def test_full_block_leaves_images_unchanged_and_small_blocks_do_not():
    x = images()
    assert torch.equal(BlockShuffle(28, 28, seed=5)(x), x)
    assert BlockShuffle(28, 28, seed=5).is_identity
    assert not torch.equal(BlockShuffle(28, 1, seed=5)(x), x)
    assert not torch.equal(BlockShuffle(28, 7, seed=5)(x), x)


def test_pixel_shuffle_is_block_size_one():
    a, b = pixel_shuffle(28, seed=9), BlockShuffle(28, 1, seed=9)
    assert torch.equal(a.pixel_index, b.pixel_index)
    assert a.block_permutation.numel() == 28 * 28


def test_different_seeds_give_different_permutations():
    assert not torch.equal(BlockShuffle(28, 2, 0).pixel_index, BlockShuffle(28, 2, 1).pixel_index)


def test_block_size_must_divide_the_image_and_the_error_lists_divisors():
    with pytest.raises(ValueError, match=r"divisors: \[1, 2, 4, 7, 14, 28\]"):
        BlockShuffle(28, 5)
    with pytest.raises(ValueError, match="image_size equal"):
        BlockShuffle(28, 4)(torch.zeros(1, 32, 32))


def test_permute_labels_is_one_fixed_bijection_on_every_split():
    permute = PermuteLabels(10, seed=4)
    labels = np.arange(10)
    train, test = permute(labels, "train"), permute(labels, "test")
    assert sorted(train.tolist()) == list(range(10))
    assert np.array_equal(train, test)


def test_noisy_labels_corrupt_the_requested_fraction_only_on_the_requested_splits():
    labels = np.zeros(20_000, dtype=np.int64)
    noisy = NoisyLabels(0.5, num_classes=10, seed=0)
    train = noisy(labels, "train")
    # half are redrawn uniformly over 10 classes, a tenth of those land on the true label again
    assert abs((train != labels).mean() - 0.45) < 0.02
    assert np.array_equal(noisy(labels, "test"), labels)
    assert np.array_equal(noisy(labels, "train"), train)  # fixed per example
    assert not np.array_equal(NoisyLabels(0.5, 10, seed=1)(labels, "train"), train)
    with pytest.raises(ValueError, match="must lie in"):
        NoisyLabels(1.5, 10)
