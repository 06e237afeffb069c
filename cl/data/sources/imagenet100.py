"""ImageNet-100: the 100-class subset of ILSVRC-2012 used by PODNet, DER, DyTox and GCAB-CFDC (continuum's
``ImageNet100`` with ``data_subset=imagenet100_splits/{train,val}_100.txt``; reference code github
OcraM17/GCAB-CFDC ``continual/datasets.py``).

Layout under ``data_dir``::

    imagenet/train/<wnid>/<file>.JPEG             ILSVRC-2012 train, one folder per class
    imagenet/val/<wnid>/<file>.JPEG               ILSVRC-2012 val sorted into class folders (e.g. by valprep.sh)
    imagenet100_splits/train_100.txt              '<anything>/train/<wnid>/<file>.JPEG <label>' per line
    imagenet100_splits/val_100.txt                '<anything>/val/<wnid>/<file>.JPEG <label>'

The split lists are PODNet's (github arthurdouillard/incremental_learning.pytorch, release v0.1: train_100.txt,
val_100.txt); each path is re-rooted onto ``imagenet/`` by its last three components (split/wnid/file) and the label
is the list's. Class name = the wnid. Test = the official validation images of the 100 classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cl.data.sources.base import SplitDatasets
from cl.data.sources.errors import DatasetNotFoundError, check_image_args, require_file
from cl.data.sources.folders import file_split, require_root
from cl.data.sources.split_lists import read_txt_split, reroot

KEY = "imagenet100"
SPLITS = "imagenet100_splits"
URL = "https://github.com/arthurdouillard/incremental_learning.pytorch/releases/download/v0.1/"


def _how(data_dir: str) -> str:
    return (
        f"put ILSVRC-2012 under '{os.path.join(data_dir, 'imagenet')}' (train/<wnid>/ and val/<wnid>/ folders) and "
        f"PODNet's split lists {URL}train_100.txt and val_100.txt under '{os.path.join(data_dir, SPLITS)}'. "
        "data.download=true is not supported for this dataset."
    )


def _read(path: str, root: str, how: str) -> tuple[list[str], list[int], dict[int, str]]:
    rel, labels = read_txt_split(path)
    paths = [reroot(p, root, 3) for p in rel]
    wnid_of: dict[int, str] = {}
    for p, y in zip(paths, labels, strict=True):
        wnid = os.path.basename(os.path.dirname(p))
        if wnid_of.setdefault(y, wnid) != wnid:
            raise ValueError(f"{path}: label {y} is given to two classes ({wnid_of[y]}, {wnid})")
    for p in paths[:1] + paths[-1:]:
        if not os.path.isfile(p):
            raise DatasetNotFoundError(KEY, p, how, f"{os.path.basename(path)} lists this image, which does not exist.")
    return paths, labels, wnid_of


def load_imagenet100(
    data_dir: str,
    image_size: int = 224,
    download: bool = False,
    augment: bool = True,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> SplitDatasets:
    """ImageNet-100 train / val datasets (see the module docstring)."""
    check_image_args(image_size, mean, std)
    data_dir = os.path.expanduser(os.fspath(data_dir))
    how = _how(data_dir)
    root = require_root(KEY, os.path.join(data_dir, "imagenet"), how, download, "ImageNet")
    train_list = require_file(KEY, os.path.join(data_dir, SPLITS, "train_100.txt"), how)
    val_list = require_file(KEY, os.path.join(data_dir, SPLITS, "val_100.txt"), how)
    p_tr, y_tr, names = _read(train_list, root, how)
    p_te, y_te, names_te = _read(val_list, root, how)
    if sorted(names) != list(range(len(names))) or names_te != {k: names[k] for k in names_te}:
        raise ValueError(f"{train_list} / {val_list}: labels must be 0..K-1 with the same class in both lists")
    classes = [names[k] for k in range(len(names))]
    return file_split((p_tr, y_tr), (p_te, y_te), classes, image_size, mean, std, augment, native_size=None)
