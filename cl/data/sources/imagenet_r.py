"""ImageNet-R (Hendrycks et al., "The Many Faces of Robustness", ICCV 2021): 200 ImageNet classes, 30,000 renditions.

Layout: the official ``imagenet-r.tar`` (https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar) extracted into
``data_dir``, i.e. ``<data_dir>/imagenet-r/<wnid>/<file>.jpg`` (200 WordNet-id folders; ``README.txt`` is ignored).
Class names are the WordNet ids.

Train/test split, as in CODA-Prompt (Smith et al., CVPR 2023; GT-RIPL/CODA-Prompt ``dataloaders/dataloader.py``,
class ``iIMAGENET_R``), which has no official split and reads a fixed list of 24,000 train / 6,000 test images from
``dataloaders/splits/imagenet-r_{train,test}.yaml``:

1. If ``<split_dir>/imagenet-r_train.yaml`` and ``imagenet-r_test.yaml`` exist (``split_dir`` defaults to
   ``<data_dir>/splits``; copy CODA-Prompt's two files there), they are used as they are, labels included; each
   listed path is re-rooted onto ``<data_dir>/imagenet-r`` by its last two components (``<wnid>/<file>``).
2. Otherwise the split is regenerated with CODA-Prompt's own recorded rule (the "HISTORY - HOW WE SAMPLED THE SPLITS"
   block of ``iIMAGENET_R.load`` in the authors' code, visible in forks of the repo): all images listed class by
   class, label = class position, then ``random.seed(0); random.shuffle(indices)`` and the first ``int(0.8 * n)``
   shuffled indices are train, the rest test (a global, not per-class, 80/20 split). The authors listed classes and
   files in ``glob`` order, which depends on the file system, so here both are **sorted** to make the rule
   deterministic; the resulting split has the same sizes and rule but is not the identical list (use 1. for that).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

from cl.data.sources.base import SplitDatasets
from cl.data.sources.errors import DatasetNotFoundError, check_image_args, require_listed_files
from cl.data.sources.folders import file_split, list_images, require_root
from cl.data.sources.split_lists import class_names_from_paths, find_split_pair, read_yaml_split, reroot

KEY = "imagenet_r"
FOLDER = "imagenet-r"
URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
TRAIN_FRACTION = 0.8


def _how(data_dir: str) -> str:
    return (
        f"download {URL} and extract it into '{data_dir}' (it creates '{os.path.join(data_dir, FOLDER)}/<wnid>/"
        f"*.jpg'); for CODA-Prompt's exact split also copy dataloaders/splits/imagenet-r_train.yaml and "
        f"imagenet-r_test.yaml from github.com/GT-RIPL/CODA-Prompt into '{os.path.join(data_dir, 'splits')}'. "
        "data.download=true is not supported for this dataset."
    )


def scan_class_folders(root: str) -> tuple[list[str], list[list[str]]]:
    """Sorted class folders of ``root`` and, for each, its sorted image files (full paths)."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    return classes, [list_images(os.path.join(root, c), IMAGE_EXTENSIONS) for c in classes]


def coda_random_split(n: int, seed: int = 0, train_fraction: float = TRAIN_FRACTION) -> tuple[list[int], list[int]]:
    """CODA-Prompt's rule: shuffle ``range(n)`` with ``random.seed(seed)``; first ``int(0.8 n)`` are train."""
    index = list(range(n))
    random.Random(seed).shuffle(index)  # same permutation as random.seed(seed); random.shuffle(index)
    cut = int(train_fraction * n)
    return index[:cut], index[cut:]


def load_imagenet_r(
    data_dir: str,
    image_size: int = 224,
    download: bool = False,
    augment: bool = True,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    split_dir: str | None = None,
    split_seed: int = 0,
) -> SplitDatasets:
    """ImageNet-R train/test datasets (see the module docstring for the split rule)."""
    check_image_args(image_size, mean, std)
    data_dir = os.path.expanduser(os.fspath(data_dir))
    how = _how(data_dir)
    root = require_root(KEY, os.path.join(data_dir, FOLDER), how, download, "ImageNet-R")
    split_dir = os.path.join(data_dir, "splits") if split_dir is None else os.path.expanduser(split_dir)

    pair = find_split_pair(split_dir, "imagenet-r")
    if pair is not None:
        (p_tr, y_tr), (p_te, y_te) = (read_yaml_split(p) for p in pair)
        p_tr, p_te = [reroot(p, root, 2) for p in p_tr], [reroot(p, root, 2) for p in p_te]
        require_listed_files(KEY, p_tr, how, pair[0])
        require_listed_files(KEY, p_te, how, pair[1])
        classes = class_names_from_paths(p_tr + p_te, y_tr + y_te, depth=1, what=f"{pair[0]} + {pair[1]}")
    else:
        classes, per_class = scan_class_folders(root)
        paths = [p for files in per_class for p in files]
        labels = [y for y, files in enumerate(per_class) for _ in files]
        if not paths:
            raise DatasetNotFoundError(KEY, root, how, "The folder holds no <wnid>/<image> files.")
        train_idx, test_idx = coda_random_split(len(paths), split_seed)
        p_tr, y_tr = [paths[i] for i in train_idx], [labels[i] for i in train_idx]
        p_te, y_te = [paths[i] for i in test_idx], [labels[i] for i in test_idx]
    return file_split((p_tr, y_tr), (p_te, y_te), classes, image_size, mean, std, augment, native_size=None)
