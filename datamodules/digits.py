"""scikit-learn's bundled handwritten digits (1,797 images, 8 x 8, 10 classes) as a tiny DataModule.

A real, offline, very small classification target. ``image_size`` > 8 upsamples (bilinear) so that
networks built for 28 x 28 inputs (e.g. conv4 pretrained on Fashion-MNIST) can be fine-tuned on it.
Splits are stratified by class and fixed by ``seed``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.fashion_mnist import (
    ArrayDataModule,
    ImageArrayDataset,
    InputTransform,
    LabelTransform,
    pixel_stats,
)


def load_digits_images(image_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 images [1797, S, S] scaled from 0..16 to 0..255, int64 labels)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))
    if image_size != 8:
        images = F.interpolate(images[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)[
            :, 0
        ]
    return images.round().clamp(0, 255).to(torch.uint8).numpy(), digits.target.astype(np.int64)


def stratified_split(labels: np.ndarray, fractions: tuple[float, float, float], seed: int) -> list[np.ndarray]:
    """Train/val/test indices with the same class proportions, from a seeded shuffle within each class."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(fractions[1] * len(members)))
        n_test = int(round(fractions[2] * len(members)))
        bounds = (0, len(members) - n_val - n_test, len(members) - n_test, len(members))
        for k in range(3):
            parts[k].append(members[bounds[k] : bounds[k + 1]])
    return [np.sort(np.concatenate(p)) for p in parts]


class DigitsDataModule(ArrayDataModule):
    """sklearn digits (1 x S x S, S = ``image_size``, 10 classes) with stratified seeded splits."""

    def __init__(
        self,
        seed: int = 0,
        batch_size: int = 64,
        image_size: int = 8,
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
        normalize: bool = True,
        input_transform: InputTransform | None = None,
        label_transform: LabelTransform | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(seed, batch_size, num_workers, input_transform, label_transform)
        self.save_hyperparameters()
        if val_fraction < 0 or test_fraction <= 0 or val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0, > 0 "
                "and leave training data (sum < 1)"
            )
        if image_size < 8:
            raise ValueError(f"image_size={image_size} must be >= 8 (the digits are 8 x 8)")
        self.fractions = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
        self.normalize = normalize
        self.num_classes = 10
        self.image_shape = (1, image_size, image_size)

    def build_datasets(self) -> dict[str, Dataset]:
        images, labels = load_digits_images(self.image_shape[-1])
        train, val, test = stratified_split(labels, self.fractions, self.seed)
        mean, std = pixel_stats(images[train]) if self.normalize else (0.0, 1.0)
        return {
            split: ImageArrayDataset(
                images[idx], self.transform_labels(labels[idx], split), mean, std, self.input_transform
            )
            for split, idx in (("train", train), ("val", val), ("test", test))
        }
