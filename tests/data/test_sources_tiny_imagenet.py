"""Tiny ImageNet loader on a tiny tree in the official tiny-imagenet-200 layout (test = official val)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from cl.data.sources import DatasetNotFoundError, load_tiny_imagenet

WNIDS = ["n09193705", "n01443537", "n04067472"]  # wnids.txt is not sorted in the real archive either
WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n04067472": "reel",
    "n09193705": "alp",
    "n00001740": "entity",  # words.txt covers all of ImageNet, not only the 200 classes
}
VAL = [
    ("val_0.JPEG", "n04067472"),
    ("val_1.JPEG", "n09193705"),
    ("val_2.JPEG", "n04067472"),
    ("val_3.JPEG", "n01443537"),
]


def write_tree(data_dir: Path, per_class: int = 3) -> Path:
    root = data_dir / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in WORDS.items()))
    for c, wnid in enumerate(WNIDS):
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for k in range(per_class):
            mode = "L" if k == 1 else "RGB"  # some real Tiny ImageNet images are grayscale
            Image.new(mode, (64, 64), color=50 * c if mode == "L" else (50 * c, 20 * k, 9)).save(
                images / f"{wnid}_{k}.JPEG"
            )
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t63\t63")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "val" / "images").mkdir(parents=True)
    for name, _ in VAL:
        Image.new("RGB", (64, 64), color=(1, 2, 3)).save(root / "val" / "images" / name)
    (root / "val" / "val_annotations.txt").write_text("".join(f"{n}\t{w}\t0\t32\t44\t62\n" for n, w in VAL))
    (root / "test" / "images").mkdir(parents=True)  # unlabelled official test set: ignored
    return root


def test_layout_labels_and_names(tmp_path: Path) -> None:
    write_tree(tmp_path)
    data = load_tiny_imagenet(str(tmp_path), augment=False)
    order = sorted(WNIDS)
    assert data.classes == ["goldfish", "reel", "alp"]  # names of sorted(wnids)
    assert len(data.train) == 9 and len(data.test) == len(VAL)
    for path, label in zip(data.train.paths, data.train.targets):
        assert Path(path).parent.parent.name == order[label]
    assert data.test.targets == [order.index(w) for _, w in VAL]
    img, label = data.train[1]  # the grayscale one
    assert isinstance(img, torch.Tensor) and img.shape == (3, 64, 64) and label == data.train.targets[1]
    assert torch.allclose(img[0], img[2])  # gray replicated to RGB


def test_augmented_resized_and_native(tmp_path: Path) -> None:
    write_tree(tmp_path)
    big = load_tiny_imagenet(str(tmp_path), image_size=96)
    assert big.train[0][0].shape == (3, 96, 96) and big.test[0][0].shape == (3, 96, 96)
    native = load_tiny_imagenet(str(tmp_path), image_size=64, augment=True)
    assert native.train[2][0].shape == (3, 64, 64)


def test_missing_parts(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_tiny_imagenet(str(tmp_path))
    assert str(tmp_path / "tiny-imagenet-200") in str(err.value) and "tiny-imagenet-200.zip" in str(err.value)
    root = write_tree(tmp_path)
    (root / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match="val_3.JPEG"):
        load_tiny_imagenet(str(tmp_path))
    (root / "train" / "n04067472" / "images").rename(root / "train" / "n04067472" / "moved")
    with pytest.raises(DatasetNotFoundError, match="n04067472"):
        load_tiny_imagenet(str(tmp_path))


def test_annotation_with_unknown_wnid(tmp_path: Path) -> None:
    root = write_tree(tmp_path)
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n99999999"):
        load_tiny_imagenet(str(tmp_path))
