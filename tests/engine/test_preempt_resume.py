"""Preemption and resume reproduce the uninterrupted run exactly (CPU): the engine reseeds every experience
(``seed_everything(seed + t)``) and draws each experience's data order from the seed, so a run resumed from
``task_{t}.ckpt`` continues as if it had never stopped.

* in-process: a run whose checkpoints after experience 2 are removed is resumed and must give the same matrix;
* subprocess: ``python -m cl.run`` receives SIGTERM while training experience 2 (a test-only callback,
  :class:`SigtermAt`, sends it to its own process), exits with 143 after asking the (fake) ``scontrol`` to requeue
  the SLURM job, and the same command run again resumes in the same run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cl.engine.checkpoint import load_checkpoint
from tests.helpers import cli_overrides, compose_config, run_cl

REPO = Path(__file__).resolve().parents[2]
# 5 experiences x 2 batches of 32 on digits: seconds per run; the stream and model are those of the default config
OVERRIDES = ["+trainer.limit_train_batches=2", "logger=none"]


class SigtermAt(Callback):
    """Test hook: send SIGTERM to this process after ``step`` batches of ``experience``, once per ``marker`` file.

    ``+callbacks.sigterm._target_=tests.engine.test_preempt_resume.SigtermAt +callbacks.sigterm.experience=2 ...``;
    the marker makes the rerun of the same command (same config, so it may resume) run through.
    """

    def __init__(self, experience: int, step: int, marker: str) -> None:
        self.experience, self.step, self.marker = experience, step, Path(marker)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if int(pl_module.experience_index) == self.experience and batch_idx + 1 == self.step:
            if not self.marker.exists():
                self.marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGTERM)


class SigtermAfterExperience(Callback):
    """Test hook (a run-long callback's ``on_experience_end``, called outside ``trainer.fit``): SIGTERM after ``t``."""

    def __init__(self, experience: int) -> None:
        self.experience = experience

    def on_experience_end(self, runner: Any, experience: Any) -> None:
        if experience.index == self.experience:
            os.kill(os.getpid(), signal.SIGTERM)


def _single_thread_run(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """An in-process reference run with one torch thread (as the subprocesses, OMP_NUM_THREADS=1): same float order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_cl(compose_config(overrides, run_dir))
    finally:
        torch.set_num_threads(threads)


def _weights(run_dir: Path, t: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / f"task_{t}.ckpt")["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("reference")
    return run_dir, _single_thread_run(OVERRIDES, run_dir)


@pytest.mark.timeout(300)
def test_run_stopped_after_experience_2_and_resumed_gives_the_same_matrix(reference, tmp_path):
    run_dir, ref = reference  # the config records the run dir, so the stopped run is made in place
    full = tmp_path / "uninterrupted"
    shutil.copytree(run_dir / "checkpoints", full)
    for t in (3, 4):  # the run as it stood after experience 2
        (run_dir / "checkpoints" / f"task_{t}.ckpt").unlink()
    for name in ("metrics.json", "acc_matrix.csv", "acc_matrix.png"):
        (run_dir / name).unlink(missing_ok=True)
    resumed = _single_thread_run(OVERRIDES, run_dir)  # same config into the same dir: auto-resume
    assert (run_dir / "run_info.resume_2.json").is_file()
    assert resumed["complete"] is True
    np.testing.assert_array_equal(np.array(resumed["acc_matrix"]), np.array(ref["acc_matrix"]))
    np.testing.assert_array_equal(np.array(resumed["acc_matrix_task_aware"]), np.array(ref["acc_matrix_task_aware"]))
    final = load_checkpoint(full / "task_4.ckpt")["state_dict"]
    for key, value in _weights(run_dir, 4).items():
        assert torch.equal(value, final[key]), key
    assert not torch.equal(_weights(run_dir, 2)["head.weight"], final["head.weight"])


def _cl_run(run_dir: Path, extra: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cl.run", f"hydra.run.dir={run_dir}", *cli_overrides([*OVERRIDES, *extra])]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(600)
def test_sigterm_during_training_checkpoints_requeues_and_resumes(reference, tmp_path):
    ref = reference[1]
    bin_dir = tmp_path / "bin"  # a fake `scontrol` that records how it was called
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "OMP_NUM_THREADS": "1",
        "HOME": os.environ.get("HOME", str(tmp_path)),
    }
    for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "SLURM_PROCID", "LOCAL_RANK", "RANK"):
        env.pop(k, None)
    run_dir, marker = tmp_path / "run", tmp_path / "sigterm_sent"
    hook = [
        f"+callbacks.sigterm._target_={SigtermAt.__module__}.SigtermAt",
        "+callbacks.sigterm.experience=2",
        "+callbacks.sigterm.step=1",
        f"+callbacks.sigterm.marker={marker}",
        "requeue_on_preempt=true",
    ]

    first = _cl_run(run_dir, hook, env, timeout=280)
    assert first.returncode == 143, first.stderr[-3000:]
    assert marker.exists(), "the hook did not fire"
    assert "preempted: SIGTERM received while training experience 2" in first.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["initial.ckpt", "task_0.ckpt", "task_1.ckpt"]
    assert json.loads((run_dir / "metrics.json").read_text())["complete"] is False
    assert calls.read_text().split() == ["requeue", "4242"]

    second = _cl_run(run_dir, hook, env, timeout=280)  # the requeued job: same command, same run directory
    assert second.returncode == 0, second.stderr[-3000:]
    assert (run_dir / "run_info.resume_1.json").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True
    np.testing.assert_array_equal(np.array(metrics["acc_matrix"]), np.array(ref["acc_matrix"]))
    assert calls.read_text().split() == ["requeue", "4242"]  # not requeued again
    ref_dir = reference[0]
    for key, value in _weights(run_dir, 4).items():  # one torch thread in both processes: bit-identical weights
        assert torch.equal(value, _weights(ref_dir, 4)[key]), key


@pytest.mark.timeout(300)
def test_sigterm_outside_training_finishes_the_experience_and_stops_before_the_next(tmp_path):
    from cl.engine.loop import Preempted

    hook = f"+callbacks.sigterm._target_={SigtermAfterExperience.__module__}.SigtermAfterExperience"
    overrides = [*OVERRIDES, "scenario.n_experiences=2", hook, "+callbacks.sigterm.experience=0"]
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match="SIGTERM received before experience 1"):
        _single_thread_run(overrides, tmp_path / "run")  # the process survives: the engine held the signal
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["initial.ckpt", "task_0.ckpt"]  # experience 0 was evaluated and checkpointed after the signal
    assert len(load_checkpoint(tmp_path / "run" / "checkpoints" / "task_0.ckpt")["acc_matrix"]) == 1
    assert signal.getsignal(signal.SIGTERM) == before  # the engine's SIGTERM handler is gone after the run
