"""ImageNet-R loader on a tiny tree in the official layout, with and without CODA-Prompt's split lists."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cl.data.sources import DatasetNotFoundError, load_imagenet_r

# File names start with the rendition type, as in the real archive; counts differ per class on purpose.
TREE = {
    "n01443537": ["art_0.jpg", "cartoon_12.jpg", "sketch_3.jpg", "toy_1.jpg", "graffiti_7.jpg"],
    "n01484850": ["art_2.jpg", "origami_0.jpg", "painting_5.jpg", "tattoo_9.jpg"],
    "n12267677": ["deviantart_22.jpg", "embroidery_4.jpg", "misc_1.jpg", "sculpture_0.jpg", "art_8.jpg", "toy_3.jpg"],
}


def write_tree(data_dir: Path) -> Path:
    root = data_dir / "imagenet-r"
    for c, (wnid, files) in enumerate(TREE.items()):
        (root / wnid).mkdir(parents=True)
        for i, name in enumerate(files):
            size = (20 + 3 * i, 12 + 2 * c)  # non-square, varying sizes like the real renditions
            mode = "L" if name.startswith("sketch") else "RGB"  # the real archive has grayscale JPEGs
            Image.new(mode, size, color=(40 * c) if mode == "L" else (40 * c, 10 * i, 200)).save(root / wnid / name)
    (root / "README.txt").write_text("n01443537 goldfish\nn01484850 great_white_shark\nn12267677 acorn\n")
    return root


def coda_reference_split(data_dir: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """CODA-Prompt's recorded rule, written with the global ``random`` module exactly as in their code."""
    data, targets = [], []
    for y, wnid in enumerate(sorted(TREE)):
        for name in sorted(TREE[wnid]):
            data.append(str(data_dir / "imagenet-r" / wnid / name))
            targets.append(y)
    n = len(targets)
    index_sample = list(range(n))
    state = random.getstate()
    random.seed(0)
    random.shuffle(index_sample)
    random.setstate(state)
    train, test = index_sample[: int(0.8 * n)], index_sample[int(0.8 * n) :]
    return [(data[i], targets[i]) for i in train], [(data[i], targets[i]) for i in test]


def test_regenerated_split_follows_coda_rule(tmp_path: Path) -> None:
    write_tree(tmp_path)
    data = load_imagenet_r(str(tmp_path), image_size=32, augment=False)
    ref_train, ref_test = coda_reference_split(tmp_path)
    assert list(zip(data.train.paths, data.train.targets)) == ref_train
    assert list(zip(data.test.paths, data.test.targets)) == ref_test
    assert len(data.train) == 12 and len(data.test) == 3  # int(0.8 * 15)
    assert data.classes == sorted(TREE)
    assert set(data.train.paths).isdisjoint(data.test.paths)
    for path, label in zip(data.train.paths + data.test.paths, data.train.targets + data.test.targets):
        assert Path(path).parent.name == data.classes[label]


def test_split_seed_changes_split_but_not_sizes(tmp_path: Path) -> None:
    write_tree(tmp_path)
    a = load_imagenet_r(str(tmp_path), split_seed=0)
    b = load_imagenet_r(str(tmp_path), split_seed=1)
    assert len(b.train) == len(a.train) and a.train.paths != b.train.paths


def test_items_are_rgb_tensors_of_requested_size(tmp_path: Path) -> None:
    write_tree(tmp_path)
    data = load_imagenet_r(str(tmp_path), image_size=16, augment=True)
    sketch = next(i for i, p in enumerate(data.train.paths + data.test.paths) if "sketch" in Path(p).name)
    ds, idx = (data.train, sketch) if sketch < len(data.train) else (data.test, sketch - len(data.train))
    for i in (0, idx):
        img, label = ds[i]
        assert isinstance(img, torch.Tensor) and img.shape == (3, 16, 16) and label == ds.targets[i]
    img, _ = data.test[0]
    assert img.shape == (3, 16, 16)


def test_coda_yaml_lists_are_used_verbatim(tmp_path: Path) -> None:
    write_tree(tmp_path)
    # CODA-Prompt's lists: paths relative to *their* repo root, labels in their (glob) class order, not sorted.
    order = ["n12267677", "n01443537", "n01484850"]
    entries = [(f"data/imagenet-r/{w}/{f}", order.index(w)) for w in order for f in TREE[w]]
    train, test = entries[::2], entries[1::2]
    (tmp_path / "splits").mkdir()
    for name, part in (("train", train), ("test", test)):
        cfg = {"data": [p for p, _ in part], "targets": [t for _, t in part]}
        (tmp_path / "splits" / f"imagenet-r_{name}.yaml").write_text(yaml.dump(cfg, default_flow_style=False))
    data = load_imagenet_r(str(tmp_path), image_size=16)
    assert len(data.train) == len(train) and len(data.test) == len(test)
    assert data.train.targets == [t for _, t in train] and data.test.targets == [t for _, t in test]
    assert data.classes == order
    assert data.train.paths[0] == str(tmp_path / "imagenet-r" / "n12267677" / TREE["n12267677"][0])
    assert data.test[0][0].shape == (3, 16, 16)


def test_split_list_pointing_at_missing_images(tmp_path: Path) -> None:
    write_tree(tmp_path)
    (tmp_path / "splits").mkdir()
    for name in ("train", "test"):
        cfg = {"data": ["data/imagenet-r/n99999999/art_0.jpg"], "targets": [0]}
        (tmp_path / "splits" / f"imagenet-r_{name}.yaml").write_text(yaml.dump(cfg))
    with pytest.raises(DatasetNotFoundError, match="n99999999"):
        load_imagenet_r(str(tmp_path))


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_imagenet_r(str(tmp_path))
    msg = str(err.value)
    assert "data=imagenet_r" in msg and str(tmp_path / "imagenet-r") in msg and "imagenet-r.tar" in msg
