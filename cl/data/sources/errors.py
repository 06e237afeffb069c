"""Errors and early argument checks shared by the dataset loaders.

A missing dataset must stop a run before any training starts, with a message that says which config choice asked for
it (``data=<key>``), which path was expected, and how to get the data. Bad arguments fail early with the config key,
the value and the allowed values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence


class DatasetNotFoundError(FileNotFoundError):
    """A dataset (or one of its files) is not where the config says it should be.

    The message names the dataset key (``data=cifar100``), the expected path and how to get the data.
    """

    def __init__(self, key: str, path: str | os.PathLike[str], how: str, detail: str = "") -> None:
        self.key = key
        self.path = os.fspath(path)
        self.how = how
        self.detail = detail
        lines = [f"data={key}: dataset not found at '{self.path}'."]
        if detail:
            lines.append(detail)
        lines.append(f"How to get it: {how}")
        super().__init__("\n".join(lines))

    def __reduce__(self):  # keep the error picklable (DataLoader workers, multiprocessing)
        return (DatasetNotFoundError, (self.key, self.path, self.how, self.detail))


def require_dir(key: str, path: str | os.PathLike[str], how: str, detail: str = "") -> str:
    """Return ``path`` if it is a directory, else raise :class:`DatasetNotFoundError`."""
    if not os.path.isdir(path):
        raise DatasetNotFoundError(key, path, how, detail)
    return os.fspath(path)


def require_file(key: str, path: str | os.PathLike[str], how: str, detail: str = "") -> str:
    """Return ``path`` if it is a regular file, else raise :class:`DatasetNotFoundError`."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(key, path, how, detail)
    return os.fspath(path)


def require_listed_files(key: str, paths: Sequence[str], how: str, what: str) -> None:
    """Cheap existence check of a split list: every parent folder, and the first and last file, must exist.

    Checking all folders (hundreds) rather than all files (up to ~600k for DomainNet) keeps start-up fast while still
    catching a wrong root or a missing domain/class before any training.
    """
    if not paths:
        return
    for parent in sorted({os.path.dirname(p) for p in paths}):
        if not os.path.isdir(parent):
            raise DatasetNotFoundError(key, parent, how, f"{what} lists images in this folder, which does not exist.")
    for p in (paths[0], paths[-1]):
        if not os.path.isfile(p):
            raise DatasetNotFoundError(key, p, how, f"{what} lists this image, which does not exist.")


def check_choices(config_key: str, values: Iterable[str], allowed: Sequence[str]) -> list[str]:
    """Return ``list(values)`` if every value is in ``allowed`` (and there is at least one), else raise ValueError."""
    values = list(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"{config_key}={values!r}: invalid value(s) {bad!r}; allowed values: {list(allowed)!r}")
    return values


def check_image_args(image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    """Validate the image arguments shared by every loader (``data.image_size``, ``data.mean``, ``data.std``)."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
        raise ValueError(f"data.image_size={image_size!r}: must be a positive integer (e.g. 32 or 224)")
    for name, seq in (("data.mean", mean), ("data.std", std)):
        if len(seq) != 3:
            raise ValueError(f"{name}={list(seq)!r}: must have 3 values (one per RGB channel)")
    if any(float(s) <= 0 for s in std):
        raise ValueError(f"data.std={list(std)!r}: every value must be > 0")
