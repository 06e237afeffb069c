"""CIFAR-10 and CIFAR-100 from the official python-pickle archives (Krizhevsky, 2009).

Layout under ``data_dir`` (what the official ``*-python.tar.gz`` archives extract to)::

    cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}
    cifar-100-python/{train, test, meta}

Each batch is a pickle (written by Python 2; read with ``encoding="latin1"``) with ``data``: uint8 (N, 3072) rows in
channel-major order (1024 R, 1024 G, 1024 B values, each a 32x32 image row by row) and ``labels`` (CIFAR-10) or
``fine_labels`` + ``coarse_labels`` (CIFAR-100). ``batches.meta`` has ``label_names``; CIFAR-100's ``meta`` has
``fine_label_names`` and ``coarse_label_names`` (the 20 super-classes, exposed as ``coarse_targets`` /
``SplitDatasets.coarse_train|coarse_test`` for sub-class forgetting).

The files are read with this module's own reader (torchvision's CIFAR classes refuse files whose md5 differs from the
official archive, which rules out small test fixtures). ``download=True`` delegates only the fetch and extraction to
torchvision, and only when a required file is missing. Train/test split: the official one (50,000 / 10,000).
Transforms follow CODA-Prompt's ``dataloaders/utils.py`` (see ``transforms.py``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from typing import Any

from cl.data.sources.base import SplitDatasets
from cl.data.sources.errors import DatasetNotFoundError, check_image_args

CIFAR_NATIVE_SIZE = 32

_SPECS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
        "label_key": "labels",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
        "label_key": "fine_labels",
    },
}


def _how(key: str, data_dir: str) -> str:
    spec = _SPECS[key]
    return (
        f"set data.download=true (needs network), or download {spec['url']} and extract it into "
        f"'{data_dir}' so that '{os.path.join(data_dir, spec['folder'])}' holds "
        f"{', '.join(spec['train'] + spec['test'] + [spec['meta']])}."
    )


def _read_pickle(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise ValueError(
            f"{path}: damaged or not a CIFAR python pickle ({type(err).__name__}: {err}); replace it with the file of "
            "the official archive"
        ) from err
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _decode_names(names: Sequence[Any]) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _read_batches(folder: str, files: Sequence[str], label_key: str, coarse: bool):
    import numpy as np

    images, labels, coarse_labels = [], [], []
    for name in files:
        path = os.path.join(folder, name)
        entry = _read_pickle(path)
        for k in ("data", label_key, *(["coarse_labels"] if coarse else [])):
            if k not in entry:
                raise ValueError(f"{path}: missing key {k!r} (keys: {sorted(entry)})")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * CIFAR_NATIVE_SIZE**2 or len(data) != len(entry[label_key]):
            raise ValueError(
                f"{path}: 'data' has shape {data.shape} for {len(entry[label_key])} labels; "
                f"expected (N, {3 * CIFAR_NATIVE_SIZE**2})"
            )
        images.append(data.reshape(-1, 3, CIFAR_NATIVE_SIZE, CIFAR_NATIVE_SIZE).transpose(0, 2, 3, 1))
        labels.extend(int(y) for y in entry[label_key])
        if coarse:
            coarse_labels.extend(int(y) for y in entry["coarse_labels"])
    return np.ascontiguousarray(np.concatenate(images)), labels, (coarse_labels if coarse else None)


def _ensure_files(key: str, data_dir: str, download: bool) -> str:
    """Check every file exists (downloading first if asked and needed); return the dataset folder."""
    spec = _SPECS[key]
    folder = os.path.join(data_dir, spec["folder"])
    needed = [os.path.join(folder, f) for f in spec["train"] + spec["test"] + [spec["meta"]]]
    missing = [p for p in needed if not os.path.isfile(p)]
    if missing and download:
        from torchvision import datasets

        cls = datasets.CIFAR10 if key == "cifar10" else datasets.CIFAR100
        try:
            cls(root=data_dir, train=True, download=True)
        except Exception as exc:  # network errors come in many types (URLError, OSError, RuntimeError)
            raise DatasetNotFoundError(key, folder, _how(key, data_dir), f"data.download=true failed: {exc}") from exc
        missing = [p for p in needed if not os.path.isfile(p)]
    if missing:
        where = folder if not os.path.isdir(folder) else missing[0]
        raise DatasetNotFoundError(
            key, where, _how(key, data_dir), f"Missing {len(missing)} of {len(needed)} files, e.g. '{missing[0]}'."
        )
    return folder


def _load_cifar(
    key: str,
    data_dir: str,
    image_size: int = 32,
    download: bool = False,
    augment: bool = True,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    labels: str = "fine",
    rotation: float = 0.0,
) -> SplitDatasets:
    """CIFAR ``key`` (``cifar10`` or ``cifar100``): train/test :class:`ArrayImageDataset` s, CODA-Prompt transforms
    (``rotation``: an extra ``RandomRotation`` in degrees for training, see ``transforms.py``).

    ``labels`` (CIFAR-100 only): ``fine`` (100 classes) or ``coarse`` (CIFAR-20: the 20 super-classes are the targets
    and ``classes``; the fine labels and names stay on the datasets as ``fine_targets`` / ``fine_classes``, for
    sub-class forgetting as in SSD's CIFAR-20 setting)."""
    check_image_args(image_size, mean, std)
    if labels not in ("fine", "coarse") or (labels == "coarse" and key != "cifar100"):
        allowed = "['fine', 'coarse']" if key == "cifar100" else "['fine'] (coarse labels exist for cifar100 only)"
        raise ValueError(f"data.source.labels={labels!r}; allowed: {allowed}")
    data_dir = os.path.expanduser(os.fspath(data_dir))
    folder = _ensure_files(key, data_dir, download)
    spec = _SPECS[key]
    coarse = key == "cifar100"

    from cl.data.sources.image_datasets import ArrayImageDataset
    from cl.data.sources.transforms import build_transforms

    meta = _read_pickle(os.path.join(folder, spec["meta"]))
    classes = _decode_names(meta[spec["names_key"]])
    train_tf, test_tf = build_transforms(
        image_size, mean, std, augment, native_size=CIFAR_NATIVE_SIZE, rotation=rotation
    )
    x_tr, y_tr, c_tr = _read_batches(folder, spec["train"], spec["label_key"], coarse)
    x_te, y_te, c_te = _read_batches(folder, spec["test"], spec["label_key"], coarse)
    train, test = ArrayImageDataset(x_tr, y_tr, train_tf), ArrayImageDataset(x_te, y_te, test_tf)
    for ds in (train, test):
        ds.classes = classes
    if coarse and labels == "coarse":  # CIFAR-20: super-classes are the targets, fine labels kept beside them
        coarse_classes = _decode_names(meta["coarse_label_names"])
        train, test = ArrayImageDataset(x_tr, c_tr, train_tf), ArrayImageDataset(x_te, c_te, test_tf)
        for ds, fine in ((train, y_tr), (test, y_te)):
            ds.classes, ds.fine_targets, ds.fine_classes = coarse_classes, fine, classes
        return SplitDatasets(train=train, test=test, classes=coarse_classes)
    if coarse:
        coarse_classes = _decode_names(meta["coarse_label_names"])
        train.coarse_targets, test.coarse_targets = c_tr, c_te
        train.coarse_classes = test.coarse_classes = coarse_classes
    return SplitDatasets(train=train, test=test, classes=classes, coarse_train=c_tr, coarse_test=c_te)


def load_cifar10(data_dir: str, **options: Any) -> SplitDatasets:
    """CIFAR-10 (10 classes, 50,000 train / 10,000 test, 32x32) from ``<data_dir>/cifar-10-batches-py``.

    ``options``: ``image_size``, ``download``, ``augment``, ``mean``, ``std``, ``rotation`` (defaults in
    :func:`_load_cifar`).
    """
    return _load_cifar("cifar10", data_dir, **options)


def load_cifar100(data_dir: str, **options: Any) -> SplitDatasets:
    """CIFAR-100 (100 fine / 20 coarse classes, 50,000 / 10,000, 32x32) from ``<data_dir>/cifar-100-python``.

    ``options`` as for :func:`load_cifar10`, plus ``labels`` (``fine`` | ``coarse``: CIFAR-20,
    ``conf/data/cifar20.yaml``).
    """
    return _load_cifar("cifar100", data_dir, **options)
