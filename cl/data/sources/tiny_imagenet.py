"""Tiny ImageNet (Le & Yang, Stanford CS231N, 2015): 200 ImageNet classes at 64x64, 100,000 train / 10,000 val.

Layout: the official ``tiny-imagenet-200.zip`` (http://cs231n.stanford.edu/tiny-imagenet-200.zip) extracted into
``data_dir``::

    tiny-imagenet-200/wnids.txt                        200 WordNet ids, one a line
    tiny-imagenet-200/words.txt                        '<wnid>\\t<name>, <synonym>, ...' (all of ImageNet; optional)
    tiny-imagenet-200/train/<wnid>/images/<wnid>_<k>.JPEG
    tiny-imagenet-200/val/images/val_<k>.JPEG
    tiny-imagenet-200/val/val_annotations.txt          '<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>'

Split: train = ``train/``; test = the official validation set (the official ``test/`` images have no labels).
Label = position of the wnid in ``sorted(wnids.txt)`` (the same order as ``torchvision.datasets.ImageFolder`` over
``train/``). Class name = first name in ``words.txt`` for the wnid (``<name> (<wnid>)`` if two classes share it; the
wnid itself if ``words.txt`` is absent). Some images are grayscale; they are converted to RGB.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cl.data.sources.base import SplitDatasets
from cl.data.sources.errors import DatasetNotFoundError, check_image_args, require_dir, require_file
from cl.data.sources.folders import file_split, list_images, require_root

KEY = "tiny_imagenet"
FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
NATIVE_SIZE = 64
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def _how(data_dir: str) -> str:
    return (
        f"download {URL} and extract it into '{data_dir}' (it creates '{os.path.join(data_dir, FOLDER)}' with "
        "wnids.txt, train/ and val/). data.download=true is not supported for this dataset."
    )


def _read_wnids(path: str) -> list[str]:
    with open(path) as f:
        wnids = [line.strip() for line in f if line.strip()]
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{path}: duplicate WordNet ids")
    return sorted(wnids)


def _class_names(words_path: str, wnids: list[str]) -> list[str]:
    if not os.path.isfile(words_path):
        return list(wnids)
    wanted, first = set(wnids), {}
    with open(words_path) as f:
        for line in f:
            wnid, _, names = line.rstrip("\n").partition("\t")
            if wnid in wanted:
                first[wnid] = names.split(",")[0].strip() or wnid
    names = [first.get(w, w) for w in wnids]
    counts = {n: names.count(n) for n in names}
    return [n if counts[n] == 1 else f"{n} ({w})" for n, w in zip(names, wnids)]


def load_tiny_imagenet(
    data_dir: str,
    image_size: int = 64,
    download: bool = False,
    augment: bool = True,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> SplitDatasets:
    """Tiny ImageNet train / official-val datasets (see the module docstring)."""
    check_image_args(image_size, mean, std)
    data_dir = os.path.expanduser(os.fspath(data_dir))
    how = _how(data_dir)
    root = require_root(KEY, os.path.join(data_dir, FOLDER), how, download, "Tiny ImageNet")
    wnids = _read_wnids(require_file(KEY, os.path.join(root, "wnids.txt"), how))
    annotations = require_file(KEY, os.path.join(root, "val", "val_annotations.txt"), how)
    val_images = require_dir(KEY, os.path.join(root, "val", "images"), how)
    train_dirs = [os.path.join(root, "train", w, "images") for w in wnids]
    for d in train_dirs:
        require_dir(KEY, d, how, "wnids.txt lists a class whose training images are missing.")
    label_of = {w: i for i, w in enumerate(wnids)}

    p_tr, y_tr = [], []
    for y, d in enumerate(train_dirs):
        files = list_images(d, IMAGE_EXTENSIONS)
        p_tr += files
        y_tr += [y] * len(files)
    p_te, y_te = [], []
    with open(annotations) as f:
        for n, line in enumerate(f, 1):
            fields = line.strip().split("\t")
            if fields == [""]:
                continue
            if len(fields) < 2 or fields[1] not in label_of:
                raise ValueError(f"{annotations}:{n}: expected '<file>\\t<wnid from wnids.txt>\\t...', got {line!r}")
            p_te.append(os.path.join(val_images, fields[0]))
            y_te.append(label_of[fields[1]])
    for p in p_te[:1] + p_te[-1:]:
        if not os.path.isfile(p):
            raise DatasetNotFoundError(KEY, p, how, "val_annotations.txt lists this image, which does not exist.")
    classes = _class_names(os.path.join(root, "words.txt"), wnids)
    return file_split((p_tr, y_tr), (p_te, y_te), classes, image_size, mean, std, augment, native_size=NATIVE_SIZE)
