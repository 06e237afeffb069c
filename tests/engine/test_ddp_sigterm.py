"""SIGTERM to a 2-process gloo ``cl.run`` while it trains (cl/engine/distributed.py, "Preemption").

The signal goes to every process of the run, as SLURM's ``scancel`` / preemption signals every task (the run is started
in its own session and a test callback on rank 0 signals that process group during experience 1). Both ranks must stop
(bounded: the test's timeout), the run exits with 143 with the checkpoints of the completed experiences on disk and
``metrics.json`` marked incomplete, and ``resume=RUN_DIR`` completes the run with the matrix and weights of an
uninterrupted 2-process run.
"""

from __future__ import annotations

import json
import os
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
from tests.helpers import cli_overrides

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["scenario.n_experiences=2", "+trainer.limit_train_batches=3", "logger=none", "data.batch_size=32"]
TIMEOUT = 240  # per cl.run call: a rank left waiting in a collective would hang until gloo's 30 min timeout


class SigtermGroupAt(Callback):
    """Test hook: on rank 0, after ``step`` batches of ``experience``, SIGTERM the whole process group (every rank),
    once per ``marker`` file (the resumed run, which rebuilds this callback from the saved config, runs through)."""

    def __init__(self, experience: int, step: int, marker: str) -> None:
        self.experience, self.step, self.marker = experience, step, Path(marker)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank != 0 or self.marker.exists():
            return
        if int(pl_module.experience_index) == self.experience and batch_idx + 1 == self.step:
            self.marker.write_text(str(os.getpid()))
            os.killpg(os.getpgrp(), signal.SIGTERM)


def _cl_run(run_dir: Path, extra: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "SLURM_NTASKS", "SLURM_JOB_ID"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "cl.run", f"hydra.run.dir={run_dir}", "trainer=ddp_cpu", *cli_overrides(extra)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks (the session's process group), then fail
        out, err = proc.communicate()
        pytest.fail(f"cl.run did not stop within {TIMEOUT} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _no_process_left(pid_marker: Path, wait_s: float = 30.0) -> None:
    """Within ``wait_s``, no process of the run's session is alive (rank 1 stopped too)."""
    import time

    pgid = int(pid_marker.read_text())  # rank 0 leads the session started for the run
    deadline = time.monotonic() + wait_s
    while alive := [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(p) == pgid]:
        assert time.monotonic() < deadline, f"processes of the run still alive after {wait_s} s: {alive}"
        time.sleep(0.5)


def _pgid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.slow  # ~2.6 min on a loaded 2-core machine (three 2-process runs)
@pytest.mark.timeout(900)
def test_sigterm_stops_both_ranks_and_resume_completes_the_run(tmp_path):
    marker = tmp_path / "sigterm_sent"
    hook = [
        f"+callbacks.sigterm._target_={SigtermGroupAt.__module__}.SigtermGroupAt",
        "+callbacks.sigterm.experience=1",
        "+callbacks.sigterm.step=2",  # experience 1 of 2: task_0.ckpt on disk, task_1 not
        f"+callbacks.sigterm.marker={marker}",
    ]
    run_dir = tmp_path / "run"
    first = _cl_run(run_dir, [*OVERRIDES, *hook])
    assert marker.exists(), f"the hook did not fire: {first.stderr[-3000:]}"
    assert first.returncode == 143, first.stderr[-3000:]
    assert first.stderr.count("preempted: SIGTERM received while training experience 1") == 2, first.stderr[-3000:]
    _no_process_left(marker)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["initial.ckpt", "task_0.ckpt"]
    assert json.loads((run_dir / "metrics.json").read_text())["complete"] is False

    second = _cl_run(run_dir, [*OVERRIDES, *hook, f"resume={run_dir}"])
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["complete"] is True

    full_dir = tmp_path / "uninterrupted"  # the same 2-process run without the signal
    full = _cl_run(full_dir, OVERRIDES)
    assert full.returncode == 0, full.stderr[-3000:]
    ref = json.loads((full_dir / "metrics.json").read_text())
    np.testing.assert_array_equal(np.array(resumed["acc_matrix"]), np.array(ref["acc_matrix"]))
    a = load_checkpoint(run_dir / "checkpoints" / "task_1.ckpt")["state_dict"]
    b = load_checkpoint(full_dir / "checkpoints" / "task_1.ckpt")["state_dict"]
    for key, value in b.items():  # one thread per rank, the same data order: bit-identical weights
        assert torch.equal(a[key], value), key
