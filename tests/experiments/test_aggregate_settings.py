"""Aggregation groups by every resolved config key that differs between runs, except the seed and the keys that do
not change an experiment (issue 18, item 4): runs of 2 and 5 experiences whose difference came from a local config
(not a swept override) are two rows with two pictures, never one average."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from experiments.aggregate import aggregate


def _run(root: Path, name: str, seed: int, n_exp: int, acc: float, **extra: object) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {
        "seed": seed,
        "data": {"name": "digits"},
        "scenario": {"name": "class", "n_experiences": n_exp},
        "method": {"_target_": "cl.methods.finetune.Finetune", "name": "finetune", "optimizer": {"lr": 0.001}},
        "trainer": {"enable_progress_bar": seed % 2 == 0, "devices": 1 + seed},
        "paths": {"output_dir": str(run)},
        **extra,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))  # the resolved record (what produced the metrics)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))  # only the seed was swept
    matrix = [[acc if j <= i else 0.0 for j in range(n_exp)] for i in range(n_exp)]
    metrics = {"acc_matrix": matrix, "avg_acc": acc, "complete": True, "seed": seed, "method": "finetune"}
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_runs_of_different_lengths_are_two_groups(tmp_path):
    root = tmp_path / "sweep"
    _run(root, "0", 0, 2, 0.8)
    _run(root, "1", 1, 2, 0.6)
    _run(root, "2", 2, 5, 0.3)
    _run(root, "3", 3, 5, 0.5)
    result = aggregate(root)
    assert result["keys"] == ["data.name", "scenario.name", "scenario.n_experiences"]  # not seed/devices/paths
    rows = {r["scenario.n_experiences"]: (r["n_runs"], r["avg_acc_mean"]) for r in result["rows"]}
    assert rows == {"2": (2, 0.7), "5": (2, 0.4)}
    pngs = sorted(p.name for p in result["files"] if p.name.startswith("acc_matrix_"))  # not the sweep pictures
    assert len(pngs) == 2 and all(p.startswith("acc_matrix_finetune__digits__class__") for p in pngs)


def test_a_differing_method_key_splits_and_shapes_are_never_averaged(tmp_path):
    root = tmp_path / "sweep"
    _run(root, "0", 0, 2, 0.8)
    _run(root, "1", 1, 2, 0.6, method={"name": "finetune", "optimizer": {"lr": 0.01}})
    result = aggregate(root)
    assert "method.optimizer.lr" in result["keys"] and len(result["rows"]) == 2


def test_a_callback_only_some_runs_have_is_one_setting(tmp_path):
    """ER + FPF beside ER (experiments/methods_digits): the FPF callback's subtree is one column, its _target_; a key
    inside it that differs between the runs having it stays a column of its own."""
    root = tmp_path / "sweep"
    fpf = {"_target_": "cl.callbacks.fpf.FPFCallback", "lr": 0.05, "iterations": 100, "modules": "default"}
    _run(root, "0", 0, 2, 0.8)
    _run(root, "1", 1, 2, 0.6)
    _run(root, "2", 0, 2, 0.9, callbacks={"fpf": fpf})
    _run(root, "3", 1, 2, 0.7, callbacks={"fpf": fpf})
    result = aggregate(root)
    assert result["keys"] == ["data.name", "scenario.name", "callbacks.fpf._target_"]
    rows = {r["callbacks.fpf._target_"]: (r["n_runs"], r["avg_acc_mean"]) for r in result["rows"]}
    assert rows == {"": (2, 0.7), "cl.callbacks.fpf.FPFCallback": (2, 0.8)}
    _run(root, "4", 2, 2, 0.5, callbacks={"fpf": {**fpf, "lr": 0.1}})
    keys = aggregate(root)["keys"]
    assert "callbacks.fpf.lr" in keys and "callbacks.fpf.iterations" in keys


def test_keys_that_follow_the_seed_do_not_split_the_seeds(tmp_path):
    """``method.buffer_seed: ${seed}`` and a callback's ``seed: ${seed}`` resolve to 0, 1, 2: still one group."""
    root = tmp_path / "sweep"
    for seed in range(3):
        _run(root, str(seed), seed, 2, 0.5 + 0.1 * seed, callbacks={"retention": {"seed": seed, "probe_size": 32}})
    result = aggregate(root)
    assert result["keys"] == ["data.name", "scenario.name"] and len(result["rows"]) == 1
    assert result["rows"][0]["n_runs"] == 3


def test_weights_files_are_compared_by_content_not_by_path(tmp_path):
    """The same committed weights read from two checkouts (two paths) is one setting; different weights are two
    groups labelled by content digest, never by a machine path (experiments/methods_digits: runs from two worktrees)."""
    a, b, c = (tmp_path / f"w{i}.pt" for i in range(3))
    a.write_bytes(b"same weights")
    b.write_bytes(b"same weights")
    c.write_bytes(b"other weights")
    root = tmp_path / "sweep"
    _run(root, "0", 0, 2, 0.8, backbone={"weights": str(a)})
    _run(root, "1", 1, 2, 0.6, backbone={"weights": str(b)})
    result = aggregate(root)
    assert "backbone.weights" not in result["keys"] and len(result["rows"]) == 1
    _run(root, "2", 2, 2, 0.4, backbone={"weights": str(c)})
    result = aggregate(root)
    assert "backbone.weights" in result["keys"] and len(result["rows"]) == 2
    labels = {r["backbone.weights"] for r in result["rows"]}
    assert all(label.startswith("sha256:") and len(label) == 19 for label in labels), labels
    assert str(tmp_path) not in (root / "aggregate" / "summary.csv").read_text()
