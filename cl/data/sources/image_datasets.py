"""Map-style datasets that decode images lazily with PIL and apply a transform.

``ArrayImageDataset`` holds in-memory uint8 HxWxC arrays (CIFAR pickles); ``FileImageDataset`` holds file paths
(ImageNet-R, DomainNet, Tiny ImageNet) and opens each image only in ``__getitem__``. Every image is converted to RGB
(ImageNet-R and Tiny ImageNet contain grayscale and CMYK JPEGs). Both expose ``targets: list[int]`` for stream builders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class ArrayImageDataset(Dataset):
    """Images kept in memory as one ``uint8`` array of shape (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], transform: Callable[[Any], Any] | None = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 of shape (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets: list[int] = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


class FileImageDataset(Dataset):
    """Images stored as files; decoded on access."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], transform: Callable[[Any], Any] | None = None):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths: list[str] = list(paths)
        self.targets: list[int] = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        with Image.open(self.paths[index]) as raw:
            img = raw.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]
