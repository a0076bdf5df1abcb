"""Epoch-seeded shuffling: the order is a function of (seed, epoch) only."""

from datamodules.samplers import EpochSeededRandomSampler


def test_order_depends_only_on_seed_and_epoch():
    a, b = EpochSeededRandomSampler(50, seed=3), EpochSeededRandomSampler(50, seed=3)
    a.set_epoch(4)
    list(b)  # consuming an earlier epoch does not change what epoch 4 gives
    b.set_epoch(4)
    assert list(a) == list(b)
    assert sorted(a) == list(range(50))
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(EpochSeededRandomSampler(50, seed=4)) != list(EpochSeededRandomSampler(50, seed=3))
