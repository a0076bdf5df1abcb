"""Tiny plain-PyTorch models and data for the analysis tests (no Lightning anywhere)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modules.nets.conv4 import CONV4_LAYERS, Conv4

IMAGE_SIZE = 16
NUM_CLASSES = 4


class TinyNet(nn.Module):
    """Conv4 (8 channels, 16x16 inputs) under ``net`` that names its watch layers (keys ``net.block1...``)."""

    def __init__(self, norm: bool = True, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = Conv4(NUM_CLASSES, in_channels=1, hidden=8, image_size=IMAGE_SIZE, norm=norm)

    def default_watch_layers(self) -> list[str]:
        return [f"net.{name}" for name in CONV4_LAYERS]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def blob_images(n: int = 64, seed: int = 0) -> TensorDataset:
    """A learnable 4-class set: a bright square in the quadrant of the class, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = 0.3 * torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    half = IMAGE_SIZE // 2
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, r * half + 2: r * half + 6, c * half + 2: c * half + 6] += 1.0
    return TensorDataset(images, labels)


def loader(n: int = 64, seed: int = 0, batch_size: int = 16, shuffle: bool = False) -> DataLoader:
    return DataLoader(blob_images(n, seed), batch_size=batch_size, shuffle=shuffle)


def train(model: nn.Module, epochs: int = 3, frozen: tuple[str, ...] = (), lr: float = 0.2) -> dict:
    """A few epochs of plain SGD on blob images (``frozen`` modules neither train nor update BN statistics);
    returns the state dict at the start."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for name in frozen:
        model.get_submodule(name).requires_grad_(False)
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    data = DataLoader(blob_images(64), batch_size=16, shuffle=True, generator=generator)
    for _ in range(epochs):
        model.train()
        for name in frozen:
            model.get_submodule(name).eval()
        for x, y in data:
            optimiser.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimiser.step()
    model.eval()
    return start
