"""End-to-end runs of the engine on the digits stream: the run directory, the matrix, checkpoints, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cl.engine.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, resolve_checkpoint
from cl.experiment import ConfigurationError
from cl.metrics import read_acc_matrix_csv
from tests.helpers import run_cl


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One shrunk finetune run on digits (5 experiences), shared by the tests that only read its outputs."""
    from tests.helpers import compose_config

    run_dir = tmp_path_factory.mktemp("run")
    overrides = ["experiment=finetune_digits", "trainer.max_epochs=1", "+trainer.limit_train_batches=4"]
    cfg = compose_config(overrides, run_dir)
    return run_dir, run_cl(cfg)


def test_run_directory_holds_the_record(finished_run):
    run_dir, metrics = finished_run
    for name in ("config.yaml", "run_info.json", "metrics.json", "acc_matrix.csv", "acc_matrix.png"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "initial.ckpt",
        *(f"task_{t}.ckpt" for t in range(5)),
    ]
    assert (run_dir / "logs" / "exp_0" / "metrics.csv").is_file()
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 0 and torch.__version__.startswith(info["packages"]["torch"])
    assert "git" in info and "commit" in info["git"]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["complete"] is True and saved["method"] == "finetune" and saved["scenario"] == "class"
    R = np.array(saved["acc_matrix"])
    assert R.shape == (5, 5) and ((R >= 0) & (R <= 1)).all()
    np.testing.assert_array_equal(read_acc_matrix_csv(run_dir / "acc_matrix.csv"), R)
    # class-incremental: classes not yet seen are masked, so accuracy on future experiences is exactly 0
    assert np.all(R[np.triu_indices(5, k=1)] == 0.0)
    assert saved["avg_acc"] == pytest.approx(R[-1].mean())
    assert "acc_matrix_task_aware" in saved and saved["seconds"] > 0


def test_step_loss_is_logged_every_step(finished_run):
    """``train/loss`` of each training step (4 per experience here) is a CSV row with Lightning's step numbering."""
    import csv

    run_dir, _ = finished_run
    for t in (0, 4):
        with open(run_dir / "logs" / f"exp_{t}" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
        losses = [float(r["train/loss"]) for r in rows]
        assert all(np.isfinite(losses)) and min(losses) > 0 and len(set(losses)) == 4
        assert {r["epoch"] for r in rows} == {"0"}


def test_checkpoint_contents_and_weights_only_loading(finished_run):
    run_dir, _ = finished_run
    ckpt = resolve_checkpoint(run_dir)
    assert ckpt.name == "task_4.ckpt"
    payload = load_checkpoint(ckpt)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["experience"] == 4
    assert len(payload["acc_matrix"]) == 5 and payload["config"]["method"]["name"] == "finetune"
    assert payload["state_dict"]["seen_classes"].all()
    first = load_checkpoint(run_dir / "checkpoints" / "task_0.ckpt")
    assert int(first["state_dict"]["seen_classes"].sum()) == 2
    assert first["experience_classes"] == payload["experience_classes"]
    # what resume and unlearning read, nothing else: each fit builds a fresh optimizer and experience t starts from
    # seed_everything(seed + t), so optimizer and RNG states would never be read
    assert set(payload) == {
        "format", "version", "experience", "num_experiences", "state_dict", "acc_matrix", "acc_matrix_task_aware",
        "R0", "R0_task_aware", "train_seconds", "scenario", "class_order", "experience_classes", "method_class",
        "callbacks", "config",
    }  # fmt: skip


def test_foreign_files_are_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "lightning.ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint written by cl.run"):
        load_checkpoint(tmp_path / "lightning.ckpt")
    (tmp_path / "notes.ckpt").write_text("hello")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "notes.ckpt")
    with pytest.raises(CheckpointError, match="not a run directory"):
        resolve_checkpoint(tmp_path)


def test_resume_from_a_directory_that_is_not_a_run(make_cfg, tmp_path):
    cfg = make_cfg(f"resume={tmp_path}")
    with pytest.raises(ConfigurationError, match=r"resume=.*not a run directory"):
        run_cl(cfg)


def test_resume_with_another_model_is_refused_and_nothing_is_lost(finished_run, make_cfg, tmp_path):
    run_dir, _ = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    # same run directory, different backbone width: the checkpoint does not fit
    cfg = make_cfg("experiment=finetune_digits", "backbone.embed_dim=48", run_dir=run_dir)
    with pytest.raises(ConfigurationError, match="already holds a run with another config"):
        run_cl(cfg)
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    assert before == after


def test_checkpoint_of_another_model_is_refused(finished_run, make_cfg, tmp_path):
    """Loading the finetune checkpoint into a ViT of another width names the mismatch."""
    from cl.engine.checkpoint import load_method_state
    from cl.experiment import build

    run_dir, _ = finished_run
    _, method = build(make_cfg("backbone.embed_dim=48"))
    with pytest.raises(CheckpointError, match="another model.*shape mismatches"):
        load_method_state(method, load_checkpoint(resolve_checkpoint(run_dir))["state_dict"], "task_4")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["scenario.n_experiences=3"], r"scenario.n_experiences=3 does not divide the 10 classes"),
        (["scenario.name=online"], r"scenario.name='online'; allowed"),
        (["backbone.name=vit_nonexistent"], r"backbone.name='vit_nonexistent' is not a timm model"),
        (["data=cifar10", "paths.data_dir=/nonexistent"], r"/nonexistent"),
        (["backbone=vit_b16", "backbone.weights=/no/such/file.safetensors"], r"backbone.weights=.*no such file"),
    ],
)
def test_bad_input_stops_before_training(make_cfg, tmp_path, overrides, match):
    run_dir = tmp_path / "bad"
    cfg = make_cfg(*overrides, run_dir=run_dir)
    with pytest.raises(ConfigurationError, match=match):
        run_cl(cfg)
    assert not (run_dir / "checkpoints").exists()


def test_unknown_group_values_are_rejected_by_hydra_with_the_options(tmp_path):
    from hydra.errors import MissingConfigException

    from tests.helpers import compose_config

    with pytest.raises(MissingConfigException, match=r"(?s)method/sgd_magic.*Available options.*finetune"):
        compose_config(["method=sgd_magic"], Path(tmp_path))


def test_same_seed_same_initial_weights_other_seed_differs(make_cfg):
    from cl.experiment import build

    a = build(make_cfg("seed=3"))[1].state_dict()
    b = build(make_cfg("seed=3"))[1].state_dict()
    c = build(make_cfg("seed=4"))[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])
