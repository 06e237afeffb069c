"""MIL data: the CLAM-layout loader on files written in exactly that layout (h5py, torch.save, CLAM's CSVs), packed
bags, the digit_bags stream and the MIL stream builder."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch

from cl.data.mil.bags import build_mil_stream
from cl.data.mil.clam import load_clam_tasks
from cl.data.mil.digit_bags import load_digit_bags
from cl.data.mil.packing import pack_bag, unpack_bags
from cl.data.sources import DatasetNotFoundError

D = 8


def _write_task(root, name, slides, fmt="h5", with_patch_labels=True, label_names=("normal", "tumor"), inside=False):
    """CLAM layout: <root>/<name>/{h5_files,pt_files}/<slide>.{h5,pt}, <name>.csv (case_id,slide_id,label) and
    splits_0.csv (index column, then train,val,test columns of different lengths)."""
    rng = np.random.default_rng(len(name))
    data_dir = root / name
    (data_dir / f"{fmt}_files").mkdir(parents=True)
    truth = {}
    for sid, label in slides.items():
        n = int(rng.integers(3, 9))
        feats = rng.standard_normal((n, D)).astype(np.float32)
        coords = (rng.integers(0, 50, (n, 2)) * 256).astype(np.int64)
        patch = (rng.random(n) < 0.5).astype(np.int64) * label
        if fmt == "h5":
            with h5py.File(data_dir / "h5_files" / f"{sid}.h5", "w") as f:
                f.create_dataset("features", data=feats)
                f.create_dataset("coords", data=coords)
                if with_patch_labels:
                    f.create_dataset("patch_labels", data=patch)
        else:
            torch.save(torch.from_numpy(feats), data_dir / "pt_files" / f"{sid}.pt")
        truth[sid] = (feats, coords, patch)
    csv_path = data_dir / "labels.csv" if inside else root / f"{name}.csv"
    split_path = data_dir / "splits_0.csv" if inside else root / f"{name}_splits_0.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "slide_id", "label"])
        for sid, label in slides.items():
            w.writerow([f"case_{sid}", sid, label_names[label]])
    ids = list(slides)
    cols = {"train": ids[:-3], "val": ids[-3:-2], "test": ids[-2:]}
    with open(split_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "train", "val", "test"])
        for i in range(max(len(c) for c in cols.values())):
            w.writerow([i] + [c[i] if i < len(c) else "" for c in cols.values()])
    spec = {
        "name": name,
        "data_dir": str(data_dir),
        "csv": str(csv_path),
        "split_csv": str(split_path),
        "classes": list(label_names),
    }
    return spec, truth, cols


def test_clam_h5_and_pt_tasks_shared_labels(tmp_path):
    s1, t1, c1 = _write_task(tmp_path, "cm16", {f"s{i}": i % 2 for i in range(7)}, "h5")
    s2, t2, c2 = _write_task(tmp_path, "paip_hcc", {f"p{i}": (i + 1) % 2 for i in range(6)}, "pt")
    tasks = load_clam_tasks([s1, s2], feature_dim=D)
    assert tasks.classes == ["normal", "tumor"] and [t.classes for t in tasks.tasks] == [[0, 1], [0, 1]]
    task = tasks.tasks[0]
    assert task.train.bag_ids == c1["train"] and task.test.bag_ids == c1["test"]  # val is not trained on
    x, y, inst, coords = task.train[1]
    feats, xy, patch = t1["s1"]
    np.testing.assert_array_equal(x.numpy(), feats)
    np.testing.assert_array_equal(coords.numpy(), xy)
    np.testing.assert_array_equal(inst.numpy(), patch)
    assert y == 1
    x, y, inst, coords = tasks.tasks[1].test[0]  # pt files: no coords, no patch labels
    np.testing.assert_array_equal(x.numpy(), t2[c2["test"][0]][0])
    assert torch.all(inst == -1) and torch.all(coords == -1)
    stream = build_mil_stream(tasks)
    assert stream.scenario == "domain" and stream.num_classes == 2 and len(stream) == 2
    assert stream.experiences[1].train[0][0].shape[1] == D


def test_clam_per_task_labels_make_a_class_incremental_stream(tmp_path):
    s1, _, _ = _write_task(tmp_path, "nsclc", {f"n{i}": i % 2 for i in range(6)}, label_names=("luad", "lusc"))
    s2, _, c2 = _write_task(tmp_path, "brca", {f"b{i}": i % 2 for i in range(6)}, label_names=("idc", "ilc"))
    tasks = load_clam_tasks([s1, s2], label_space="per_task", feature_dim=D)
    assert tasks.classes == ["nsclc/luad", "nsclc/lusc", "brca/idc", "brca/ilc"]
    stream = build_mil_stream(tasks)
    assert stream.scenario == "class" and [e.classes for e in stream.experiences] == [[0, 1], [2, 3]]
    assert tasks.tasks[1].test.targets == [2 + int(s[1:]) % 2 for s in c2["test"]]
    with pytest.raises(ValueError, match="scenario.name=domain"):
        build_mil_stream(tasks, name="domain")


def test_clam_errors_name_the_problem(tmp_path):
    spec, _, _ = _write_task(tmp_path, "cm16", {f"s{i}": i % 2 for i in range(6)})
    with pytest.raises(DatasetNotFoundError, match="pt_files"):
        load_clam_tasks([{**spec, "data_dir": str(tmp_path / "nowhere")}], feature_dim=D)
    with pytest.raises(ValueError, match="feature_dim"):
        load_clam_tasks([spec], feature_dim=1024)
    with pytest.raises(ValueError, match="label_space"):
        load_clam_tasks([spec], label_space="nope", feature_dim=D)
    (tmp_path / "cm16" / "h5_files" / "s0.h5").unlink()
    with pytest.raises(DatasetNotFoundError, match="s0.h5"):
        load_clam_tasks([spec], feature_dim=D)
    spec, _, _ = _write_task(tmp_path, "paip", {f"s{i}": i % 2 for i in range(6)})
    with open(spec["csv"], "a") as fh:
        fh.write("case_x,s9,unknown\n")
    with pytest.raises(ValueError, match="unknown"):
        load_clam_tasks([spec], feature_dim=D)


def test_pack_and_unpack():
    bag = torch.randn(5, 3)
    packed, kept = pack_bag(bag, 8)
    feats, valid = unpack_bags(packed[None], 3)
    assert valid[0].tolist() == [True] * 5 + [False] * 3
    torch.testing.assert_close(feats[0, :5], bag)
    sub, kept = pack_bag(torch.randn(20, 3), 6, torch.Generator().manual_seed(0))
    assert len(kept) == 6 and bool(sub[:, 3].all()) and kept.tolist() == sorted(kept.tolist())
    with pytest.raises(ValueError, match="in_dim"):
        unpack_bags(torch.randn(1, 4, 7), 3)


def test_digit_bags_are_seeded_and_labelled():
    a = load_digit_bags(n_train_bags=6, n_test_bags=4, seed=3)
    b = load_digit_bags(n_train_bags=6, n_test_bags=4, seed=3)
    assert len(a.tasks) == 4 and a.feature_dim == 64
    for ta, tb in zip(a.tasks, b.tasks, strict=True):
        for i in range(len(ta.train)):
            xa, ya, ia, ca = ta.train[i]
            xb, yb, ib, cb = tb.train[i]
            assert torch.equal(xa, xb) and ya == yb and torch.equal(ia, ib)
            assert ya == int(ia.sum() > 0)  # bag positive iff a target instance is present
            side = int(np.ceil(np.sqrt(len(ia))))
            assert len({tuple(c) for c in ca.tolist()}) == len(ia) and int(ca.max()) < side
    c = load_digit_bags(n_train_bags=6, n_test_bags=4, seed=4)
    assert not torch.equal(a.tasks[0].train[0][0], c.tasks[0].train[0][0])
    packed = load_digit_bags(n_train_bags=2, n_test_bags=2, pad_to=70)
    x, _, inst, coords = packed.tasks[0].train[0]
    assert x.shape == (70, 65) and int((inst >= 0).sum()) == int(x[:, 64].sum())


def test_comel_presets_build_on_real_layout_files(make_cfg, tmp_path):
    from cl.experiment import build

    root = tmp_path / "comel"
    for name in ("camelyon16", "paip_hcc", "paip_prostate", "paip_hbp", "paip_colon"):
        _write_task(root, name, {f"{name}_{i}": i % 2 for i in range(6)}, inside=True)
    small = ["trainer=lightning", "data.batch_size=1", "backbone.dim=16", "backbone.num_heads=2"]
    cfg = make_cfg("experiment=comel_cm16_paip", f"data.root={root}", f"data.feature_dim={D}", *small)
    stream, method = build(cfg)
    assert (stream.scenario, len(stream), stream.num_classes) == ("domain", 5, 2) and method.seg_coef == 1.0
    tcga = tmp_path / "tcga"
    for name, classes in (
        ("nsclc", ("LUAD", "LUSC")),
        ("brca", ("IDC", "ILC")),
        ("rcc", ("CCRCC", "PRCC", "CHRCC")),
        ("esca", ("ESAD", "ESCC")),
    ):
        _write_task(
            tcga, name, {f"{name}_{i}": i % len(classes) for i in range(6)}, "pt", label_names=classes, inside=True
        )
    cfg = make_cfg("experiment=comel_tcga", f"data.root={tcga}", f"data.feature_dim={D}", *small)
    stream, method = build(cfg)
    assert (stream.scenario, len(stream), stream.num_classes) == ("class", 4, 9)
    assert stream.experiences[2].classes == [4, 5, 6]
