"""CIFAR-10/100 loaders on tiny pickles written in the official python layout (keys, file names, row format)."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from cl.data.sources import DatasetNotFoundError, load_cifar10, load_cifar100

C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _rows(images: np.ndarray) -> np.ndarray:
    """Official row format: 1024 R values, then 1024 G, then 1024 B (channel-major, each image row by row)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4, bytes_keys: bool = False):
    """Write cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}; return (train images, labels, test ...)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    x_tr, y_tr = [], []
    for b in range(1, 6):
        x, y = _images(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
        _dump(
            folder / f"data_batch_{b}",
            {
                k("batch_label"): f"training batch {b} of 5",
                k("labels"): y,
                k("data"): _rows(x),
                k("filenames"): [f"img_{b}_{i}.png" for i in y],
            },
        )
        x_tr.append(x)
        y_tr += y
    x_te, y_te = _images(rng, n_test), rng.integers(0, 10, n_test).tolist()
    _dump(
        folder / "test_batch",
        {
            k("batch_label"): "testing batch 1 of 1",
            k("labels"): y_te,
            k("data"): _rows(x_te),
            k("filenames"): ["t.png"] * n_test,
        },
    )
    _dump(
        folder / "batches.meta", {k("label_names"): C10_NAMES, k("num_cases_per_batch"): per_batch, k("num_vis"): 3072}
    )
    return np.concatenate(x_tr), y_tr, x_te, y_te


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 4):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    fine_names = [f"fine_{i:02d}" for i in range(100)]
    coarse_names = [f"coarse_{i:02d}" for i in range(20)]
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        x = _images(rng, n)
        fine = rng.integers(0, 100, n).tolist()
        coarse = [f // 5 for f in fine]  # any fixed fine->coarse map; the loader must pass it through untouched
        _dump(
            folder / name,
            {
                "filenames": [f"{i}.png" for i in range(n)],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": coarse,
                "data": _rows(x),
            },
        )
        out += [x, fine, coarse]
    _dump(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})
    return out


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_reads_official_layout(tmp_path: Path, bytes_keys: bool) -> None:
    x_tr, y_tr, x_te, y_te = write_cifar10(tmp_path, bytes_keys=bytes_keys)
    data = load_cifar10(str(tmp_path), augment=False)
    assert len(data.train) == 15 and len(data.test) == 4
    assert data.train.targets == y_tr and data.test.targets == y_te
    assert data.classes == C10_NAMES and data.coarse_train is None
    img, label = data.train[7]
    assert isinstance(img, torch.Tensor) and img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert label == y_tr[7]
    expected = torch.from_numpy(x_tr[7]).permute(2, 0, 1).float() / 255  # HWC pixels back in CHW order
    assert torch.allclose(img, expected, atol=1e-6)
    img_te, _ = data.test[3]
    assert torch.allclose(img_te, torch.from_numpy(x_te[3]).permute(2, 0, 1).float() / 255, atol=1e-6)


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    x_tr, fine_tr, coarse_tr, x_te, fine_te, coarse_te = write_cifar100(tmp_path)
    data = load_cifar100(str(tmp_path), image_size=48, augment=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert data.train.targets == fine_tr and data.test.targets == fine_te
    assert data.coarse_train == coarse_tr and data.coarse_test == coarse_te
    assert data.train.coarse_targets == coarse_tr and len(data.train.coarse_classes) == 20
    assert len(data.classes) == 100 and data.classes[3] == "fine_03"
    img, _ = data.train[0]
    assert img.shape == (3, 48, 48)
    assert img.min() >= -2.0 - 1e-6 and img.max() <= 2.0 + 1e-6  # (x - 0.5) / 0.25 with x in [0, 1]


def test_missing_root_names_path_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_cifar100(str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert "data=cifar100" in msg and str(tmp_path / "nowhere" / "cifar-100-python") in msg
    assert "cifar-100-python.tar.gz" in msg and "data.download=true" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_single_batch_is_reported(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_4"):
        load_cifar10(str(tmp_path))


def test_download_delegates_to_torchvision_only_when_missing(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    calls = []

    def fake_cifar100(root, train, download):  # stands in for the network fetch + extraction
        calls.append((root, train, download))
        write_cifar100(Path(root))

    monkeypatch.setattr(tvd, "CIFAR100", fake_cifar100)
    data = load_cifar100(str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True, True)] and len(data.train) == 6
    load_cifar100(str(tmp_path), download=True)  # files now present: no second fetch
    assert len(calls) == 1


def test_failed_download_becomes_dataset_not_found(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    def offline(root, train, download):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DatasetNotFoundError, match="no network"):
        load_cifar10(str(tmp_path), download=True)


def test_bad_image_size_is_rejected_early(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.image_size=0"):
        load_cifar10(str(tmp_path), image_size=0)


def test_cifar20_super_classes_are_the_labels_and_fine_labels_stay(tmp_path: Path) -> None:
    x_tr, fine_tr, coarse_tr, x_te, fine_te, coarse_te = write_cifar100(tmp_path)
    data = load_cifar100(str(tmp_path), labels="coarse", augment=False)
    assert data.train.targets == coarse_tr and data.test.targets == coarse_te and data.classes[0] == "coarse_00"
    assert len(data.classes) == 20 and data.coarse_train is None
    assert data.train.fine_targets == fine_tr and data.test.fine_targets == fine_te
    assert data.train.fine_classes[7] == "fine_07"
    with pytest.raises(ValueError, match=r"data.source.labels='super'; allowed: \['fine', 'coarse'\]"):
        load_cifar100(str(tmp_path), labels="super")
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="coarse labels exist for cifar100 only"):
        load_cifar10(str(tmp_path), labels="coarse")
    rotated = load_cifar100(str(tmp_path), rotation=15)
    assert "RandomRotation" in repr(rotated.train.transform) and "RandomRotation" not in repr(rotated.test.transform)
    with pytest.raises(ValueError, match="data.source.rotation=-1"):
        load_cifar100(str(tmp_path), rotation=-1)
