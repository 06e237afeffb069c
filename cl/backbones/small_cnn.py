"""A small CNN (two 3x3 conv blocks with batch norm and max-pool, then global average pooling) for fast CPU runs and
the engine-overhead benchmark. It follows the :class:`cl.backbones.Backbone` contract: ``forward(x)`` returns pooled
features of size ``num_features``."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(32)-bn-relu-pool, conv(64)-bn-relu-pool, global average pool → 64 features."""

    is_vit = False

    def __init__(self, in_chans: int = 1, width: int = 32, img_size: int | None = None) -> None:
        super().__init__()
        self.name = "small_cnn"
        self.features_net = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.num_features = 2 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_net(x)
