"""DomainNet (Peng et al., "Moment Matching for Multi-Source Domain Adaptation", ICCV 2019): 345 classes, 6 domains.

Layout: the official per-domain zips and split lists (http://ai.bu.edu/M3SDA/) under ``<data_dir>/domainnet``
(``<data_dir>/DomainNet``, CODA-Prompt's folder name, is accepted too)::

    <domain>/<class>/<domain>_<class id>_<image id>.jpg       domain in clipart infograph painting quickdraw real sketch
    <domain>_train.txt  <domain>_test.txt                      lines '<domain>/<class>/<file>.jpg <label>'

Train/test split, in order of preference:

1. CODA-Prompt's fixed lists (Smith et al., CVPR 2023; GT-RIPL/CODA-Prompt ``dataloaders/dataloader.py`` class
   ``iDOMAIN_NET`` reads ``dataloaders/splits/domainnet_{train,test}.yaml`` = ``{data: [paths], targets: [labels]}``,
   paths like ``data/DomainNet/<domain>/<class>/<file>.jpg``): used as they are, labels included, when both files are
   in ``split_dir`` (default ``<data_dir>/splits``); paths are re-rooted by their last three components. How the
   authors drew those lists is not published with the code (their README said DomainNet was "coming soon"), so they
   cannot be regenerated here: copy the two files to use CODA-Prompt's exact split.
2. Otherwise the official ``<domain>_train.txt`` / ``<domain>_test.txt`` lists with their official labels
   (0..344, alphabetical class names), concatenated over ``domains`` in the given order.

``domains`` (``data.domains``, default all six) keeps only images of those domains in either case; labels stay the
global 0..344 ids, so class-incremental streams over a subset of domains still see all 345 classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cl.data.sources.base import SplitDatasets
from cl.data.sources.errors import (
    check_choices,
    check_image_args,
    require_dir,
    require_file,
    require_listed_files,
)
from cl.data.sources.folders import file_split, require_root
from cl.data.sources.split_lists import (
    class_names_from_paths,
    filter_by_component,
    find_split_pair,
    read_txt_split,
    read_yaml_split,
    reroot,
)

KEY = "domainnet"
FOLDERS = ("domainnet", "DomainNet")
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
NUM_CLASSES = 345
HOME = "http://ai.bu.edu/M3SDA/"
_ZIP = "https://csr.bu.edu/ftp/visda/2019/multi-source/{sub}{domain}.zip"
_TXT = "https://csr.bu.edu/ftp/visda/2019/multi-source/domainnet/txt/{domain}_{split}.txt"


def _how(root: str) -> str:
    return (
        f"download each domain's zip (e.g. {_ZIP.format(sub='groundtruth/', domain='clipart')}, see {HOME}) and "
        f"its lists ({_TXT.format(domain='<domain>', split='train')} and _test.txt), unzip the zips into "
        f"'{root}' so that '{root}/<domain>/<class>/*.jpg' exists, and put the .txt lists in '{root}'. "
        "data.download=true is not supported for this dataset."
    )


def _find_root(data_dir: str) -> str:
    for name in FOLDERS:
        if os.path.isdir(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return os.path.join(data_dir, FOLDERS[0])


def load_domainnet(
    data_dir: str,
    image_size: int = 224,
    download: bool = False,
    augment: bool = True,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    domains: list[str] | None = None,
    split_dir: str | None = None,
) -> SplitDatasets:
    """DomainNet train/test datasets over ``domains`` (default: all six; see the module docstring for the split)."""
    check_image_args(image_size, mean, std)
    domains = check_choices("data.domains", DOMAINS if domains is None else domains, DOMAINS)
    if len(set(domains)) != len(domains):
        raise ValueError(f"data.domains={domains!r}: each domain may appear once; allowed values: {list(DOMAINS)!r}")
    data_dir = os.path.expanduser(os.fspath(data_dir))
    root = _find_root(data_dir)
    how = _how(root)
    require_root(KEY, root, how, download, "DomainNet")
    for d in domains:
        require_dir(KEY, os.path.join(root, d), how, f"Domain '{d}' (data.domains) has no image folder.")
    split_dir = os.path.join(data_dir, "splits") if split_dir is None else os.path.expanduser(split_dir)

    pair = find_split_pair(split_dir, "domainnet")
    if pair is not None:
        lists = []
        for path in pair:
            paths, labels = read_yaml_split(path)
            paths, labels = filter_by_component(paths, labels, 3, set(domains))
            lists.append(([reroot(p, root, 3) for p in paths], labels))
        sources = pair
    else:
        lists = []
        sources = ("<domain>_train.txt", "<domain>_test.txt")
        for split in ("train", "test"):
            paths, labels = [], []
            for d in domains:
                txt = require_file(
                    KEY,
                    os.path.join(root, f"{d}_{split}.txt"),
                    how,
                    f"The official {split} list of domain '{d}' is missing.",
                )
                p, y = read_txt_split(txt)
                paths += [reroot(q, root, 3) for q in p]
                labels += y
            lists.append((paths, labels))
    (p_tr, y_tr), (p_te, y_te) = lists
    for (paths, _), src in zip(lists, sources):
        require_listed_files(KEY, paths, how, src)
    classes = class_names_from_paths(p_tr + p_te, y_tr + y_te, depth=1, what=f"DomainNet lists {sources}")
    return file_split((p_tr, y_tr), (p_te, y_te), classes, image_size, mean, std, augment, native_size=None)
