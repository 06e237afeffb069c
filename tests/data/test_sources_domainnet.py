"""DomainNet loader on a tiny tree in the official layout (domain folders + <domain>_{train,test}.txt lists)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cl.data.sources import DatasetNotFoundError, load_domainnet

DOMAINS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
CLASSES = ["aircraft_carrier", "airplane", "zigzag"]  # official labels are alphabetical: 0, 1, ..., 344 (zigzag)
LABELS = {"aircraft_carrier": 0, "airplane": 1, "zigzag": 344}


def write_tree(data_dir: Path, folder: str = "domainnet") -> dict[str, tuple[list[str], list[str]]]:
    """Write <folder>/<domain>/<class>/<domain>_<cls>_<k>.jpg and official lists; return lines per domain."""
    root = data_dir / folder
    lines = {}
    for d_i, domain in enumerate(DOMAINS):
        train, test = [], []
        for c_i, cls in enumerate(CLASSES):
            (root / domain / cls).mkdir(parents=True)
            for k in range(2 + (d_i + c_i) % 2):  # 2 or 3 images per (domain, class)
                name = f"{domain}_{LABELS[cls]:03d}_{k:06d}.jpg"
                Image.new("RGB", (18 + k, 14), color=(30 * d_i, 60 * c_i, 5 * k)).save(root / domain / cls / name)
                (test if k == 0 else train).append(f"{domain}/{cls}/{name} {LABELS[cls]}")
        (root / f"{domain}_train.txt").write_text("\n".join(train) + "\n")
        (root / f"{domain}_test.txt").write_text("\n".join(test) + "\n")
        lines[domain] = (train, test)
    return lines


def test_official_lists_all_domains(tmp_path: Path) -> None:
    lines = write_tree(tmp_path)
    data = load_domainnet(str(tmp_path), image_size=16, augment=False)
    n_train = sum(len(tr) for tr, _ in lines.values())
    n_test = sum(len(te) for _, te in lines.values())
    assert len(data.train) == n_train and len(data.test) == n_test == len(DOMAINS) * len(CLASSES)
    assert len(data.classes) == 345 and data.classes[0] == "aircraft_carrier" and data.classes[344] == "zigzag"
    expected = [line.split()[0] for tr, _ in (lines[d] for d in DOMAINS) for line in tr]
    assert [str(Path(p).relative_to(tmp_path / "domainnet")) for p in data.train.paths] == expected
    for path, label in zip(data.train.paths, data.train.targets):
        assert data.classes[label] == Path(path).parent.name
    img, label = data.test[5]
    assert isinstance(img, torch.Tensor) and img.shape == (3, 16, 16) and label == data.test.targets[5]


def test_domain_subset(tmp_path: Path) -> None:
    lines = write_tree(tmp_path)
    data = load_domainnet(str(tmp_path), domains=["real", "clipart"])
    assert len(data.train) == len(lines["real"][0]) + len(lines["clipart"][0])
    assert {Path(p).parts[-3] for p in data.train.paths + data.test.paths} == {"real", "clipart"}
    assert Path(data.train.paths[0]).parts[-3] == "real"  # concatenated in the order given


def test_unknown_domain_is_rejected(tmp_path: Path) -> None:
    write_tree(tmp_path)
    with pytest.raises(ValueError, match=r"data.domains.*'photo'.*allowed values.*clipart"):
        load_domainnet(str(tmp_path), domains=["clipart", "photo"])


def test_capitalised_folder_and_coda_yaml_lists(tmp_path: Path) -> None:
    lines = write_tree(tmp_path, folder="DomainNet")
    # CODA-Prompt-style lists: repo-relative paths under data/DomainNet, their own labels.
    entries = [(f"data/DomainNet/{line.split()[0]}", i % 2) for d in DOMAINS for i, line in enumerate(lines[d][0])]
    (tmp_path / "splits").mkdir()
    for name, part in (("train", entries[:-4]), ("test", entries[-4:])):
        cfg = {"data": [p for p, _ in part], "targets": [t for _, t in part]}
        (tmp_path / "splits" / f"domainnet_{name}.yaml").write_text(yaml.dump(cfg, default_flow_style=False))
    with pytest.raises(ValueError, match="label 0 is used for both"):  # labels inconsistent with class folders
        load_domainnet(str(tmp_path))
    entries = [(p, CLASSES.index(Path(p).parent.name)) for p, _ in entries]
    for name, part in (("train", entries[:-4]), ("test", entries[-4:])):
        cfg = {"data": [p for p, _ in part], "targets": [t for _, t in part]}
        (tmp_path / "splits" / f"domainnet_{name}.yaml").write_text(yaml.dump(cfg, default_flow_style=False))
    data = load_domainnet(str(tmp_path), domains=["clipart", "sketch"], image_size=16)
    keep = [(p, t) for p, t in entries[:-4] if p.split("/")[2] in ("clipart", "sketch")]
    assert data.train.targets == [t for _, t in keep] and data.classes == CLASSES
    assert data.train.paths[0] == str(tmp_path / "DomainNet" / keep[0][0].removeprefix("data/DomainNet/"))
    assert all(Path(p).parts[-3] == "sketch" for p in data.test.paths)  # the last 4 entries are sketch images
    assert data.train[0][0].shape == (3, 16, 16)


def test_missing_list_and_missing_root(tmp_path: Path) -> None:
    write_tree(tmp_path)
    (tmp_path / "domainnet" / "quickdraw_test.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="quickdraw_test.txt"):
        load_domainnet(str(tmp_path))
    assert len(load_domainnet(str(tmp_path), domains=["real"]).test) == len(CLASSES)
    with pytest.raises(DatasetNotFoundError) as err:
        load_domainnet(str(tmp_path / "empty"))
    assert "data=domainnet" in str(err.value) and str(tmp_path / "empty" / "domainnet") in str(err.value)
