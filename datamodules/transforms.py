"""Input and label transforms shared by the DataModules.

``BlockShuffle`` is the input destruction of Neyshabur et al. (2020, "What is being transferred"):
each image is cut into b x b blocks which are permuted with ONE fixed permutation (drawn once from
``seed``), so train and test images are scrambled the same way. ``block_size=image_size`` leaves the
image unchanged; ``block_size=1`` permutes single pixels, i.e. it IS the full pixel shuffle
(``pixel_shuffle`` is a named shortcut for it).

Label transforms follow the DataModules' ``label_transform`` protocol: a callable
``(labels: np.ndarray, split: str) -> np.ndarray`` applied once to each split's whole label array, so
that noisy labels stay fixed per example for the whole run.
"""

from __future__ import annotations

import numpy as np
import torch


class BlockShuffle:
    """Permute the b x b blocks of square images with one fixed permutation.

    Works on ``[C, H, W]`` and ``[B, C, H, W]`` tensors (any dtype). The permutation depends only on
    ``(image_size, block_size, seed)``: every call, on every split, uses the same one.
    """

    def __init__(self, image_size: int, block_size: int, seed: int = 0) -> None:
        if block_size < 1 or image_size % block_size != 0:
            divisors = [d for d in range(1, image_size + 1) if image_size % d == 0]
            raise ValueError(
                f"block_size={block_size} does not tile an image of side {image_size}; "
                f"choose one of its divisors: {divisors}"
            )
        self.image_size = image_size
        self.block_size = block_size
        self.seed = seed
        blocks_per_side = image_size // block_size
        generator = torch.Generator().manual_seed(seed)
        self.block_permutation = torch.randperm(blocks_per_side**2, generator=generator)
        self.pixel_index = self._pixel_index(image_size, block_size, self.block_permutation)

    @staticmethod
    def _pixel_index(image_size: int, block_size: int, block_permutation: torch.Tensor) -> torch.Tensor:
        """Flat source index of every output pixel: output block k shows input block permutation[k]."""
        n = image_size // block_size
        grid = torch.arange(image_size * image_size).view(n, block_size, n, block_size)
        blocks = grid.permute(0, 2, 1, 3).reshape(n * n, block_size, block_size)
        shuffled = blocks[block_permutation].view(n, n, block_size, block_size)
        return shuffled.permute(0, 2, 1, 3).reshape(-1)

    @property
    def is_identity(self) -> bool:
        return bool((self.pixel_index == torch.arange(self.pixel_index.numel())).all())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() not in (3, 4) or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"BlockShuffle expects [C,H,W] or [B,C,H,W] with H=W={self.image_size}, got "
                f"{tuple(images.shape)}; build it with image_size equal to the images' side"
            )
        flat = images.flatten(-2)
        return flat[..., self.pixel_index].view(images.shape)

    def __repr__(self) -> str:
        return f"BlockShuffle(image_size={self.image_size}, block_size={self.block_size}, seed={self.seed})"


def pixel_shuffle(image_size: int, seed: int = 0) -> BlockShuffle:
    """The full pixel shuffle: ``BlockShuffle`` with 1 x 1 blocks (one fixed permutation of pixels)."""
    return BlockShuffle(image_size, block_size=1, seed=seed)


class PermuteLabels:
    """Relabel classes with one fixed permutation (same on every split): a label-permuted target task."""

    def __init__(self, num_classes: int, seed: int = 0) -> None:
        self.num_classes = num_classes
        self.permutation = np.random.default_rng(seed).permutation(num_classes)

    def __call__(self, labels: np.ndarray, split: str) -> np.ndarray:
        return self.permutation[np.asarray(labels)].astype(np.int64)


class NoisyLabels:
    """Replace a fixed fraction of labels by uniformly drawn ones (symmetric noise; a draw may hit the truth).

    ``fraction=1.0`` gives fully random labels. Only the splits in ``splits`` are corrupted (by
    default train and val, so test accuracy still measures the clean task). The corrupted examples
    and their new labels are fixed by ``seed`` and the split name.
    """

    SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

    def __init__(
        self, fraction: float, num_classes: int, seed: int = 0, splits: tuple[str, ...] = ("train", "val")
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must lie in [0, 1] (0 = clean labels, 1 = random labels)")
        self.fraction = fraction
        self.num_classes = num_classes
        self.seed = seed
        self.splits = tuple(splits)

    def __call__(self, labels: np.ndarray, split: str) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64).copy()
        if split not in self.splits or self.fraction == 0.0:
            return labels
        rng = np.random.default_rng([self.seed, self.SPLIT_CODES.get(split, 3)])
        noisy = rng.random(len(labels)) < self.fraction
        labels[noisy] = rng.integers(0, self.num_classes, size=int(noisy.sum()))
        return labels
