"""Folder-of-images plumbing shared by the file-backed loaders (ImageNet-R, DomainNet, Tiny ImageNet).

Three steps every such loader takes: check that the dataset folder exists before any heavy work (none of these datasets
can be downloaded automatically, so ``data.download=true`` only changes the message), list a folder's image files as
``torchvision.datasets.ImageFolder`` does (sorted, filtered by extension) but skipping hidden files (macOS ``._*``
resource forks, which are not images), and wrap the final path/label lists in :class:`FileImageDataset` with the
train/test transforms of ``transforms.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cl.data.sources.base import SplitDatasets
from cl.data.sources.errors import DatasetNotFoundError, require_dir


def require_root(key: str, root: str, how: str, download: bool, name: str) -> str:
    """Return the dataset folder ``root``, or raise :class:`DatasetNotFoundError` naming ``data=<key>`` and ``how``.

    With ``download`` (``data.download=true``) the message says that ``name`` cannot be fetched automatically.
    """
    if download and not os.path.isdir(root):
        raise DatasetNotFoundError(key, root, how, f"data.download=true cannot fetch {name} automatically.")
    return require_dir(key, root, how)


def list_images(folder: str, extensions: tuple[str, ...]) -> list[str]:
    """Full paths of the image files in ``folder`` (case-insensitive ``extensions``), sorted by name, hidden skipped."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(extensions) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]


def file_split(
    train: tuple[list[str], list[int]],
    test: tuple[list[str], list[int]],
    classes: list[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool,
    native_size: int | None,
) -> SplitDatasets:
    """Train/test :class:`FileImageDataset` s over (paths, labels) lists, with ``build_transforms``' transforms."""
    from cl.data.sources.image_datasets import FileImageDataset  # torch/torchvision only once the files exist
    from cl.data.sources.transforms import build_transforms

    train_tf, test_tf = build_transforms(image_size, mean, std, augment, native_size=native_size)
    return SplitDatasets(
        train=FileImageDataset(*train, train_tf), test=FileImageDataset(*test, test_tf), classes=classes
    )
