"""Resume semantics (issue 18, items 5-7): ``resume=DIR key=value`` applies the keys that may change (paths, devices,
progress bar, logger, time limits) and refuses the ones that would change the experiment, listing them; a run stopped
during experience 0 resumes from ``initial.ckpt``; ``resume=RUN/checkpoints/task_t.ckpt`` needs no ``hydra.run.dir``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cl.engine.resume_policy import merge_for_resume
from cl.resolvers import _run_dir
from tests.helpers import TINY, compose_config, run_cl, run_module

SAVED = {
    "seed": 0,
    "paths": {"root_dir": "/old", "data_dir": "/old/data", "log_dir": "/old/logs"},
    "data": {"batch_size": 32, "num_workers": 0, "source": {"data_dir": "/old/data", "image_size": 32}},
    "method": {"name": "finetune", "optimizer": {"lr": 0.001}},
    "trainer": {"devices": 1, "enable_progress_bar": False, "max_epochs": 1},
    "logger": None,
}


def _given(**changes: object) -> dict:
    import copy

    given = copy.deepcopy(SAVED)
    for key, value in changes.items():
        node = given
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return given


def test_keys_that_change_the_experiment_are_refused_with_the_list():
    given = _given(seed=1, method__optimizer__lr=0.5, trainer__enable_progress_bar=True)
    with pytest.raises(ValueError) as err:
        merge_for_resume(SAVED, given, ["seed=1", "method.optimizer.lr=0.5", "trainer.enable_progress_bar=true"])
    msg = str(err.value)
    assert "seed: 0 in the run, 1 given" in msg and "method.optimizer.lr: 0.001 in the run, 0.5 given" in msg
    assert "enable_progress_bar" not in msg.split("refused:")[1].split(". Keys")[0]


def test_a_group_override_compares_the_whole_group():
    given = _given(method={"name": "ewc", "optimizer": {"lr": 0.001}, "ewc_lambda": 100.0})
    with pytest.raises(ValueError, match=r"method.ewc_lambda: '<absent>' in the run.*method.name: 'finetune'"):
        merge_for_resume(SAVED, given, ["method=ewc"])
    assert merge_for_resume(SAVED, SAVED, ["seed=0", "method=finetune"])[1] == []  # equal values: nothing to refuse


def test_paths_devices_and_progress_bar_apply_and_a_moved_data_dir_reaches_the_data_source():
    given = _given(paths__data_dir="/new/data", trainer__devices=2, trainer__enable_progress_bar=True)
    merged, applied = merge_for_resume(
        SAVED, given, ["paths.data_dir=/new/data", "trainer.devices=2", "trainer.enable_progress_bar=true"]
    )
    assert applied == ["paths.data_dir", "trainer.devices", "trainer.enable_progress_bar"]
    assert merged["paths"]["data_dir"] == "/new/data" and merged["data"]["source"]["data_dir"] == "/new/data"
    assert merged["trainer"]["devices"] == 2 and merged["trainer"]["enable_progress_bar"] is True
    assert merged["paths"]["log_dir"] == "/old/logs" and merged["seed"] == 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny 2-experience run and a copy of its final matrix."""
    import torch

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same float order
    try:
        metrics = run_cl(compose_config(TINY, run_dir))
    finally:
        torch.set_num_threads(threads)
    return run_dir, metrics


def _stopped_copy(finished, dest: Path, keep: int) -> Path:
    """The finished run as it stood with only ``task_{<keep}.ckpt`` written (keep=0: killed during experience 0)."""
    run_dir, _ = finished
    shutil.copytree(run_dir, dest)
    for t in range(keep, 2):
        (dest / "checkpoints" / f"task_{t}.ckpt").unlink()
    (dest / "metrics.json").unlink()
    return dest


@pytest.mark.timeout(600)
def test_resume_with_overrides_subprocess(finished, tmp_path):
    run_dir = _stopped_copy(finished, tmp_path / "run", keep=1)
    refused = run_module("cl.run", [f"resume={run_dir}", "seed=1", "method.optimizer.lr=0.5"], timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "seed: 0 in the run, 1 given" in refused.stderr and "method.optimizer.lr: 0.001" in refused.stderr
    assert not (run_dir / "metrics.json").exists()
    moved = [f"resume={run_dir}", f"paths.data_dir={tmp_path}/moved", "trainer.enable_progress_bar=true"]
    ok = run_module("cl.run", moved)
    assert ok.returncode == 0, ok.stderr[-3000:]
    info = json.loads((run_dir / "run_info.resume_0.json").read_text())
    assert info["applied"] == ["paths.data_dir", "trainer.enable_progress_bar"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    np.testing.assert_array_equal(np.array(metrics["acc_matrix"]), np.array(finished[1]["acc_matrix"]))


@pytest.mark.timeout(600)
def test_a_run_stopped_during_experience_0_resumes_from_initial_ckpt(finished, tmp_path):
    run_dir = _stopped_copy(finished, tmp_path / "run", keep=0)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["initial.ckpt"]
    metrics = run_cl(compose_config([*TINY, f"resume={run_dir}"], run_dir))
    assert metrics["complete"] is True and (run_dir / "run_info.resume_initial.json").is_file()
    np.testing.assert_array_equal(np.array(metrics["acc_matrix"]), np.array(finished[1]["acc_matrix"]))


def test_resume_from_a_checkpoint_file_picks_a_run_directory(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("initial.ckpt", "task_0.ckpt"):
        (ckpts / name).write_bytes(b"x")
    assert _run_dir(str(ckpts / "task_0.ckpt"), "NEW") == str(tmp_path / "run")  # the last one: its own directory
    (ckpts / "task_1.ckpt").write_bytes(b"x")
    assert _run_dir(str(ckpts / "task_0.ckpt"), "NEW") == "NEW"  # an earlier one: never over the later checkpoints
    assert _run_dir(str(tmp_path / "run"), "NEW") == str(tmp_path / "run")
    assert _run_dir(str(tmp_path / "missing.ckpt"), "NEW") == "NEW"


@pytest.mark.timeout(600)
def test_resume_from_task_checkpoint_without_run_dir_subprocess(finished, tmp_path):
    run_dir = _stopped_copy(finished, tmp_path / "run", keep=1)
    ckpt = run_dir / "checkpoints" / "task_0.ckpt"
    res = run_module("cl.run", [f"resume={ckpt}"], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run directory: {run_dir}" in res.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    np.testing.assert_array_equal(np.array(metrics["acc_matrix"]), np.array(finished[1]["acc_matrix"]))
