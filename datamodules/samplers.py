"""Samplers whose order depends only on (seed, epoch), so a run resumed mid-training sees exactly the
batches an uninterrupted run would have seen. Lightning calls ``set_epoch`` at every epoch; under
DDP it replaces the sampler with a DistributedSampler, which is seeded the same way."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSeededRandomSampler(Sampler[int]):
    """A random permutation of ``range(n)`` drawn from ``seed`` and the current epoch."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n
