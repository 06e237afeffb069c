"""scikit-learn's digits: 1,797 real 8x8 handwritten digit images (UCI optdigits test set), shipped with scikit-learn.

The offline default dataset. Images are scaled to [0, 1] (pixel values are 0..16), resized once (bilinear) to the
backbone's input size, and kept as tensors in memory. The train/test split is fixed: a stratified 75/25 split with
``random_state=0`` (sklearn ``train_test_split``), independent of the run's seed, so every run sees the same test set.

``augment=True`` (``data.source.augment``; default false) gives the training images a random translation, the digits'
form of the random-crop augmentation of the CIFAR recipes (cl/data/sources/transforms.py): each training image is
padded by ``image_size // 8`` pixels with the background value (one original pixel at 16 px) and cropped back at a
uniformly drawn offset, a fresh draw at every access from torch's global generator (seeded by the run's seed). No
flip (digits are not mirror-symmetric). The test images are never augmented.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from cl.data.sources import SplitDatasets

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


class LabelledTensorDataset(TensorDataset):
    """``TensorDataset(images, labels)`` that also exposes ``.targets`` (a list of ints), as Avalanche expects.

    ``shift`` > 0: each access returns the image translated by a random offset in ``[-shift, shift]`` pixels on each
    axis, the uncovered border filled with ``fill`` (the background value).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0, fill: float = 0.0) -> None:
        super().__init__(images, labels)
        self.images = images
        self.labels = labels
        self.targets: list[int] = labels.tolist()
        self.shift, self.fill = int(shift), float(fill)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.shift > 0:
            image = random_shift(image, self.shift, self.fill)
        return image, self.targets[index]


def random_shift(image: torch.Tensor, shift: int, fill: float = 0.0) -> torch.Tensor:
    """``image`` (C, H, W) padded by ``shift`` pixels with ``fill`` and cropped back to (H, W) at a random offset."""
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (shift, shift, shift, shift), value=fill)
    dy, dx = torch.randint(0, 2 * shift + 1, (2,)).tolist()
    return padded[..., dy : dy + h, dx : dx + w]


def load_digits(
    image_size: int = 8, channels: int = 1, mean: float = 0.0, std: float = 1.0, augment: bool = False
) -> SplitDatasets:
    """Load the digits as a fixed train/test split of ``(channels, image_size, image_size)`` float tensors.

    ``augment``: random translation of the training images by up to ``image_size // 8`` pixels (module docstring).
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if channels not in (1, 3):
        raise ValueError(f"data.channels={channels} for digits; allowed: 1 or 3")
    if not isinstance(augment, bool):
        raise ValueError(f"data.source.augment={augment!r} for digits; allowed: true or false")
    bunch = sk_load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = ((images - mean) / std).expand(-1, channels, -1, -1).contiguous()
    labels = torch.tensor(bunch.target, dtype=torch.long)
    idx = torch.arange(len(labels)).numpy()
    train_idx, test_idx = train_test_split(
        idx, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=bunch.target
    )
    train_idx, test_idx = sorted(train_idx.tolist()), sorted(test_idx.tolist())
    shift = max(1, image_size // 8) if augment else 0
    return SplitDatasets(
        train=LabelledTensorDataset(images[train_idx], labels[train_idx], shift=shift, fill=(0.0 - mean) / std),
        test=LabelledTensorDataset(images[test_idx], labels[test_idx]),
        classes=[str(c) for c in range(10)],
    )
