"""Pre-extracted patch features of whole-slide images in the CLAM layout (Lu et al., Nature BME 2021,
github mahmoodlab/CLAM ``create_patches_fp.py`` / ``extract_features_fp.py``), as CoMEL uses them (UNI, 1024-d).

Per task (one dataset or organ), under its ``data_dir``:

    h5_files/<slide_id>.h5     datasets ``features`` (N x D float) and ``coords`` (N x 2, level-0 pixels); optional
                               ``patch_labels`` (N, 0 normal / 1 tumor) for localisation, as the reference's h5 files
    pt_files/<slide_id>.pt     a tensor N x D (no coords), or a dict with ``features`` [, ``coords``, ``patch_labels``]

a CSV with columns ``slide_id,label`` (CLAM's ``dataset_csv``; extra columns such as ``case_id`` are ignored; a label is
a class name of the task, a key of ``label_map``, or an integer class index of the task) and CLAM's split CSV
(``splits_<k>.csv``: an index column then the columns ``train``, ``val``, ``test`` listing slide ids, ragged). Our
engine has no validation step: ``train_splits`` (default ``[train]``) names the columns trained on; ``test`` is
evaluated. ``format: auto`` reads ``h5_files`` when the folder exists, else ``pt_files``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch

from cl.data.mil.bags import BagArrays, BagDataset, MILTask, MILTasks
from cl.data.sources.errors import DatasetNotFoundError, require_file

HOW = (
    "extract patch features with CLAM (github mahmoodlab/CLAM: create_patches_fp.py, then extract_features_fp.py with "
    "the UNI encoder) into <data_dir>/h5_files or pt_files, and point data.tasks[i].data_dir/csv/split_csv at them"
)
FORMATS = ("auto", "h5", "pt")


def read_h5_bag(path: str) -> BagArrays:
    import h5py

    with h5py.File(path, "r") as f:
        feats = torch.from_numpy(f["features"][()])
        n = feats.shape[0]
        coords = torch.from_numpy(f["coords"][()]).long() if "coords" in f else torch.full((n, 2), -1)
        labels = torch.from_numpy(f["patch_labels"][()]).long().flatten() if "patch_labels" in f else None
    return feats, coords, labels if labels is not None else torch.full((n,), -1, dtype=torch.long)


def read_pt_bag(path: str) -> BagArrays:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    feats = obj["features"] if isinstance(obj, Mapping) else obj
    n = feats.shape[0]
    coords = obj.get("coords") if isinstance(obj, Mapping) else None
    labels = obj.get("patch_labels") if isinstance(obj, Mapping) else None
    coords = torch.as_tensor(coords).long() if coords is not None else torch.full((n, 2), -1)
    labels = torch.as_tensor(labels).long().flatten() if labels is not None else torch.full((n,), -1)
    return feats, coords, labels


def _read_bag(folder: str, ext: str, slide_id: str) -> BagArrays:
    path = os.path.join(folder, f"{slide_id}.{ext}")
    if not os.path.isfile(path):
        raise DatasetNotFoundError("mil", path, HOW, f"slide {slide_id!r} is listed but its features are missing")
    return read_h5_bag(path) if ext == "h5" else read_pt_bag(path)


def read_labels(path: str, classes: Sequence[str], label_map: Mapping[str, int] | None) -> dict[str, int]:
    """``slide_id -> class index within the task`` from a ``slide_id,label`` CSV."""
    out: dict[str, int] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"slide_id", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a label CSV needs the columns slide_id,label; got {reader.fieldnames}")
        for row in reader:
            raw = row["label"].strip()
            if label_map and raw in label_map:
                out[row["slide_id"]] = int(label_map[raw])
            elif raw in classes:
                out[row["slide_id"]] = list(classes).index(raw)
            elif raw.lstrip("-").isdigit() and 0 <= int(raw) < len(classes):
                out[row["slide_id"]] = int(raw)
            else:
                raise ValueError(f"{path}: label {raw!r} of slide {row['slide_id']!r} is not one of {list(classes)}")
    return out


def read_splits(path: str) -> dict[str, list[str]]:
    """CLAM's ``splits_<k>.csv``: ``split name -> slide ids`` (empty cells skipped)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path}: empty split CSV")
    header = rows[0]
    out: dict[str, list[str]] = {h: [] for h in header[1:] if h}
    for row in rows[1:]:
        for name, cell in zip(header[1:], row[1:], strict=False):
            if name and cell.strip():
                out[name].append(cell.strip())
    if "test" not in out:
        raise ValueError(f"{path}: a CLAM split CSV needs a 'test' column; got {header}")
    return out


def _task(i: int, spec: Mapping[str, Any], offset: int, fmt: str, train_splits: Sequence[str], pad_to, seed) -> tuple:
    key = f"data.tasks[{i}]"
    for k in ("data_dir", "csv", "split_csv", "classes"):
        if k not in spec:
            raise ValueError(f"{key}.{k} is required (data_dir, csv, split_csv, classes)")
    data_dir, classes = str(spec["data_dir"]), [str(c) for c in spec["classes"]]
    ext = fmt
    if fmt == "auto":
        ext = "h5" if os.path.isdir(os.path.join(data_dir, "h5_files")) else "pt"
    folder = os.path.join(data_dir, f"{ext}_files")
    if not os.path.isdir(folder):
        raise DatasetNotFoundError("mil", folder, HOW, f"{key}: no {ext}_files folder")
    labels = read_labels(require_file("mil", spec["csv"], HOW), classes, spec.get("label_map"))
    splits = read_splits(require_file("mil", spec["split_csv"], HOW))
    for name in train_splits:
        if name not in splits:
            raise ValueError(f"data.source.train_splits names {name!r}; the split CSV has {list(splits)}")
    reader = partial(_read_bag, folder, ext)
    out = []
    for names in ([s for n in train_splits for s in splits[n]], splits["test"]):
        missing = [s for s in names if s not in labels]
        if missing:
            raise ValueError(f"{key}: slides {missing[:3]} of the split CSV have no label in {spec['csv']}")
        absent = [s for s in names if not os.path.isfile(os.path.join(folder, f"{s}.{ext}"))]
        if absent:  # checked before training, not when the bag is first read
            path = os.path.join(folder, f"{absent[0]}.{ext}")
            raise DatasetNotFoundError("mil", path, HOW, f"{key}: {len(absent)} listed slides have no features")
        out.append(BagDataset(names, [offset + labels[s] for s in names], reader, pad_to=pad_to, seed=seed + i))
    return str(spec.get("name", f"task{i}")), classes, out[0], out[1]


def load_clam_tasks(
    tasks: Sequence[Mapping[str, Any]],
    label_space: str = "shared",
    format: str = "auto",
    train_splits: Sequence[str] = ("train",),
    feature_dim: int = 1024,
    pad_to: int | None = None,
    seed: int = 0,
) -> MILTasks:
    """The tasks in order; ``label_space="shared"`` (every task has the same classes: continual localisation) or
    ``"per_task"`` (the tasks' classes are concatenated: continual subtyping)."""
    if label_space not in ("shared", "per_task"):
        raise ValueError(f"data.source.label_space={label_space!r}; allowed: ['shared', 'per_task']")
    if format not in FORMATS:
        raise ValueError(f"data.source.format={format!r}; allowed: {list(FORMATS)}")
    if not tasks:
        raise ValueError("data.source.tasks is empty: list at least one task (data_dir, csv, split_csv, classes)")
    out, names, offset = [], [], 0
    for i, spec in enumerate(tasks):
        name, classes, train, test = _task(i, spec, offset, format, list(train_splits), pad_to, seed)
        if label_space == "shared":
            if names and classes != names:
                raise ValueError(f"label_space=shared but data.tasks[{i}].classes={classes} differs from {names}")
            names = classes
            ids = list(range(len(classes)))
        else:
            names += [f"{name}/{c}" for c in classes]
            ids = list(range(offset, offset + len(classes)))
            offset += len(classes)
        out.append(MILTask(name, ids, train, test))
    probe = out[0].train if len(out[0].train) else out[0].test
    dim = int(probe.reader(probe.bag_ids[0])[0].shape[1]) if len(probe) else feature_dim
    if dim != feature_dim:
        raise ValueError(f"the features have {dim} dimensions but data.feature_dim={feature_dim}")
    return MILTasks(out, names, dim)
