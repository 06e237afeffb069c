"""Readers for fixed train/test split lists: CODA-Prompt's YAML lists and DomainNet's official text lists.

CODA-Prompt (GT-RIPL/CODA-Prompt, ``dataloaders/dataloader.py``, classes ``iIMAGENET_R`` and ``iDOMAIN_NET``) reads
``dataloaders/splits/{imagenet-r,domainnet}_{train,test}.yaml``, each a mapping ``{data: [image path, ...],
targets: [int label, ...]}`` whose paths are relative to the repo root (``data/imagenet-r/<wnid>/<file>.jpg``,
``data/DomainNet/<domain>/<class>/<file>.jpg``). Here those files are looked for in ``<data_dir>/splits/`` and every
path is re-rooted onto the local dataset folder by keeping its last ``keep`` components (2 for ImageNet-R, 3 for
DomainNet), so the lists work wherever the data lives.

DomainNet's official lists (Peng et al., ICCV 2019, http://ai.bu.edu/M3SDA/) are ``<domain>_{train,test}.txt`` with
lines ``<domain>/<class>/<file>.jpg <label>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence


def reroot(path: str, root: str, keep: int) -> str:
    """Join the last ``keep`` components of ``path`` (``/`` or ``\\`` separated) onto ``root``."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if len(parts) < keep:
        raise ValueError(f"split-list path {path!r} has fewer than {keep} components")
    return os.path.join(root, *parts[-keep:])


def read_yaml_split(path: str) -> tuple[list[str], list[int]]:
    """Read one CODA-Prompt split list: returns (paths as written, int targets)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader parses 600k-entry lists in seconds
    with open(path) as f:
        cfg = yaml.load(f, Loader=loader)
    if not isinstance(cfg, dict) or "data" not in cfg or "targets" not in cfg:
        raise ValueError(f"{path}: expected a mapping with keys 'data' and 'targets' (CODA-Prompt split list)")
    data, targets = list(cfg["data"]), [int(t) for t in cfg["targets"]]
    if len(data) != len(targets):
        raise ValueError(f"{path}: {len(data)} entries in 'data' but {len(targets)} in 'targets'")
    return [str(d) for d in data], targets


def read_txt_split(path: str) -> tuple[list[str], list[int]]:
    """Read one official DomainNet list: lines ``<domain>/<class>/<file> <label>``; blank lines are skipped."""
    paths, targets = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            rel, _, label = line.rpartition(" ")
            if not rel or not label.lstrip("-").isdigit():
                raise ValueError(f"{path}:{n}: expected '<domain>/<class>/<file> <label>', got {line!r}")
            paths.append(rel.strip())
            targets.append(int(label))
    return paths, targets


def class_names_from_paths(
    paths: Iterable[str], targets: Iterable[int], depth: int, what: str, num_classes: int | None = None
) -> list[str]:
    """Class names indexed by label, read from the folder ``depth`` levels above each file (1 = parent folder).

    Raises ValueError if one label appears under two folder names (a corrupt or mismatched list). Labels with no
    sample get the name ``class_<i>`` so that the list stays indexable.
    """
    names: dict[int, str] = {}
    for p, t in zip(paths, targets, strict=True):
        parts = [q for q in p.replace("\\", "/").split("/") if q]
        name = parts[-1 - depth]
        old = names.setdefault(t, name)
        if old != name:
            raise ValueError(f"{what}: label {t} is used for both class folders {old!r} and {name!r}")
    if not names:
        return []
    if min(names) < 0:
        raise ValueError(f"{what}: negative label {min(names)}")
    size = max(max(names) + 1, num_classes or 0)
    return [names.get(i, f"class_{i}") for i in range(size)]


def find_split_pair(split_dir: str, stem: str) -> tuple[str, str] | None:
    """Return ``(<split_dir>/<stem>_train.yaml, <split_dir>/<stem>_test.yaml)`` if both exist, else None."""
    pair = tuple(os.path.join(split_dir, f"{stem}_{s}.yaml") for s in ("train", "test"))
    return pair if all(os.path.isfile(p) for p in pair) else None  # type: ignore[return-value]


def filter_by_component(
    paths: Sequence[str], targets: Sequence[int], index_from_end: int, allowed: set[str]
) -> tuple[list[str], list[int]]:
    """Keep entries whose path component ``index_from_end`` (1 = file name, 3 = domain in DomainNet) is allowed."""
    kept_p, kept_t = [], []
    for p, t in zip(paths, targets, strict=True):
        parts = [q for q in p.replace("\\", "/").split("/") if q]
        if parts[-index_from_end] in allowed:
            kept_p.append(p)
            kept_t.append(t)
    return kept_p, kept_t
