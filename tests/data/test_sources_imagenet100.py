"""ImageNet-100 loader on a tiny tree laid out like ILSVRC-2012 + PODNet's split lists."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cl.data.sources import DatasetNotFoundError, load_imagenet100

WNIDS = ["n01558993", "n01440764", "n02012849"]  # list labels follow the split file, not the sorted wnids


def write_tree(data_dir: Path, per_class: int = 2) -> None:
    train_lines, val_lines = [], []
    for y, wnid in enumerate(WNIDS):
        for split, lines in (("train", train_lines), ("val", val_lines)):
            folder = data_dir / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for k in range(per_class):
                name = f"{wnid}_{k}.JPEG" if split == "train" else f"ILSVRC2012_val_{y:04d}{k:04d}.JPEG"
                Image.new("RGB", (40 + 7 * k, 30), color=(40 * y, 3, 9)).save(folder / name)
                lines.append(f"{split}/{wnid}/{name} {y}")
    (data_dir / "imagenet" / "train" / "n99999999").mkdir()  # other ImageNet classes are ignored
    splits = data_dir / "imagenet100_splits"
    splits.mkdir()
    (splits / "train_100.txt").write_text("\n".join(train_lines) + "\n")
    (splits / "val_100.txt").write_text("\n".join(val_lines) + "\n")


def test_layout_labels_and_names(tmp_path: Path) -> None:
    write_tree(tmp_path)
    data = load_imagenet100(str(tmp_path), image_size=32, augment=False)
    assert data.classes == WNIDS
    assert len(data.train) == 6 and len(data.test) == 6
    for path, label in zip(data.train.paths, data.train.targets, strict=True):
        assert Path(path).parent.name == WNIDS[label] and Path(path).is_file()
    x, y = data.test[5]
    assert tuple(x.shape) == (3, 32, 32) and y == 2


def test_missing_files_name_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="imagenet100"):
        load_imagenet100(str(tmp_path))
    write_tree(tmp_path)
    (tmp_path / "imagenet100_splits" / "val_100.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="val_100.txt"):
        load_imagenet100(str(tmp_path))


def test_presets_compose(make_cfg) -> None:
    for name, data, patch, n in (
        ("gcab_cifar100", "cifar100", 4, 10),
        ("gcab_tiny_imagenet", "tiny_imagenet", 8, 10),
        ("gcab_imagenet100", "imagenet100", 16, 10),
    ):
        cfg = make_cfg(f"experiment={name}", shrink=False)
        assert cfg.data.name == data and cfg.backbone.patch_size == patch and cfg.scenario.n_experiences == n
        assert sorted(cfg.scenario.class_order) == list(range(len(cfg.scenario.class_order)))
    cfg = make_cfg("experiment=gcab_cifar100", "gcab_order=dytox3", "scenario.n_experiences=5", shrink=False)
    assert cfg.scenario.class_order[:3] == [71, 54, 45] and cfg.method.optimizer.lr == 0.000125
