"""Conv4: the 4-block convolutional network of the MAML and fine-tuning papers.

Each block is conv3x3(hidden) -> BatchNorm -> ReLU -> maxpool2; then flatten -> linear head.
Blocks are named ``block1`` .. ``block4`` and the classifier ``head`` so that callbacks can watch
them by name (see ``CONV4_LAYERS``).
"""

from __future__ import annotations

import torch
from torch import nn

CONV4_LAYERS = ("block1", "block2", "block3", "block4", "head")


def conv_block(in_ch: int, out_ch: int, norm: bool = True, track_running_stats: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch, track_running_stats=track_running_stats))
    layers += [nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """4 x [conv3x3-hidden, BN, ReLU, maxpool] + linear head.

    ``image_size`` fixes the flattened feature size (28 -> 1x1 spatial after 4 pools, 84 -> 5x5).
    ``norm=False`` gives a norm-free variant (useful for interpolation without BN recalibration).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        hidden: int = 64,
        image_size: int = 28,
        norm: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.block1 = conv_block(in_channels, hidden, norm, track_running_stats)
        self.block2 = conv_block(hidden, hidden, norm, track_running_stats)
        self.block3 = conv_block(hidden, hidden, norm, track_running_stats)
        self.block4 = conv_block(hidden, hidden, norm, track_running_stats)
        side = image_size
        for _ in range(4):
            side //= 2
        self.feature_dim = hidden * max(side, 1) ** 2
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
