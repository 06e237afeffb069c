"""Train/test image transforms shared by every dataset loader.

Follows CODA-Prompt (Smith et al., CVPR 2023), ``dataloaders/utils.py::get_transform`` (GT-RIPL/CODA-Prompt, 605ac87):

* train, ``augment=True``: ``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip``. When the images are used at
  their native square size (CIFAR at 32 px, Tiny ImageNet at 64 px) the classic ``RandomCrop(image_size,
  padding=image_size // 8)`` (pad 4 at 32 px) + flip is used instead, as in the ResNet-on-CIFAR literature.
* test (and train with ``augment=False``):
  - fixed-size square datasets (``native_size`` given): ``Resize(image_size)`` + ``CenterCrop(image_size)``; the crop is
    a no-op on square images, so this equals CODA-Prompt's CIFAR ``Resize(224)``;
  - variable-size datasets (``native_size=None``: ImageNet-R, DomainNet): ``Resize(round(image_size * 256 / 224))`` +
    ``CenterCrop(image_size)``, i.e. CODA-Prompt's ``Resize(256)`` + ``CenterCrop(224)`` at 224 px.
* then ``ToTensor`` + ``Normalize(mean, std)``; CODA-Prompt uses mean 0 / std 1 (no normalisation), the default here.

torchvision is imported inside the function so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cl.data.sources.errors import check_image_args

RESIZE_RATIO = 256 / 224  # test-time resize before the centre crop for variable-size images


def build_transforms(
    image_size: int,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    augment: bool = True,
    native_size: int | None = None,
    rotation: float = 0.0,
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """Return ``(train_transform, test_transform)`` mapping an RGB PIL image to a normalised CxHxW float tensor.

    Args:
        image_size: output side length in pixels (``data.image_size``).
        mean, std: per-channel normalisation (``data.mean``, ``data.std``).
        augment: random crop + horizontal flip for training (``data.augment``); if false, train uses the test transform.
        native_size: side of the dataset's (square) images, or ``None`` when images vary in size.
        rotation: > 0 adds ``RandomRotation(rotation)`` (degrees) after the flip (the pytorch-cifar100 recipe of
            SSD's reference code, github weiaicunzai/pytorch-cifar100: crop, flip, rotation 15); 0 = CODA-Prompt's.
    """
    if not isinstance(rotation, int | float) or isinstance(rotation, bool) or not 0 <= rotation <= 180:
        raise ValueError(f"data.source.rotation={rotation!r}; allowed: degrees in [0, 180] (0 = no rotation)")
    check_image_args(image_size, mean, std)
    if native_size is not None and (not isinstance(native_size, int) or native_size <= 0):
        raise ValueError(f"native_size={native_size!r}: must be a positive integer or None")
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(tuple(float(m) for m in mean), tuple(float(s) for s in std))]
    if native_size is None:
        test_geometry = [T.Resize(round(image_size * RESIZE_RATIO)), T.CenterCrop(image_size)]
    else:
        test_geometry = [T.Resize(image_size), T.CenterCrop(image_size)]
    test_tf = T.Compose([*test_geometry, *tail])
    if not augment:
        return T.Compose([*test_geometry, *tail]), test_tf
    if native_size is not None and native_size == image_size:
        crop = T.RandomCrop(image_size, padding=max(1, image_size // 8))
    else:
        crop = T.RandomResizedCrop(image_size)
    rotate = [T.RandomRotation(float(rotation))] if rotation > 0 else []
    train_tf = T.Compose([crop, T.RandomHorizontalFlip(), *rotate, *tail])
    return train_tf, test_tf
