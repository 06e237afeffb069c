"""End to end on the local cluster: ``python -m cl.run -m hydra/launcher=slurm`` on the digits stream with a tiny
budget, three seeds, aggregated by ``experiments.aggregate``; and a job preempted mid-run (``scontrol requeue``:
SIGTERM, then SIGKILL after KillWait) that is requeued, resumes from its last task checkpoint and ends with the same
accuracy matrix as the uninterrupted run of the same seed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.slurm.slurm_testlib import PYTHON, REPO, release, run, squeue, wait_for

pytestmark = pytest.mark.slurm

SWEEP_TIMEOUT_S = 420
TINY = [
    "experiment=finetune_digits", "trainer.max_epochs=2", "trainer.limit_train_batches=null",
    "trainer.enable_progress_bar=false", "backbone.depth=1", "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=3", "hydra.launcher.timeout_min=15",
]  # fmt: skip


def _env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}  # avalanche writes ~/.avalanche


def _cl_run(sweep: Path, *overrides: str) -> list[str]:
    return [PYTHON, "-m", "cl.run", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}", *TINY, *overrides]


@pytest.fixture(scope="module")
def three_seeds(slurm_cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("clrun")
    sweep = tmp / "sweep"
    res = run(_cl_run(sweep, "seed=0,1,2"), timeout=SWEEP_TIMEOUT_S, cwd=REPO, env=_env(tmp))
    assert res.returncode == 0, res.stderr[-4000:]
    return sweep


def test_three_seeds_complete_and_aggregate(three_seeds: Path) -> None:
    res = run([PYTHON, "-m", "experiments.aggregate", str(three_seeds), "--strict"], timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    with (three_seeds / "aggregate" / "summary.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert (row["method"], row["data.name"], row["n_runs"], row["seeds"]) == ("finetune", "digits", "3", "0 1 2")
    accs = [json.loads((three_seeds / str(i) / "metrics.json").read_text())["avg_acc"] for i in range(3)]
    assert float(row["avg_acc_mean"]) == pytest.approx(np.mean(accs))
    assert float(row["avg_acc_std"]) == pytest.approx(np.std(accs, ddof=1))
    assert "| finetune | digits | class | 3 |" in (three_seeds / "aggregate" / "summary.md").read_text()
    assert (three_seeds / "aggregate" / "acc_matrix_finetune__digits__class.png").stat().st_size > 1000


def test_preempted_job_requeues_and_matches_uninterrupted(three_seeds: Path, tmp_path: Path) -> None:
    name = f"pre{uuid.uuid4().hex[:8]}"
    sweep = tmp_path / "sweep"
    log = (tmp_path / "sweep.log").open("w")
    cmd = _cl_run(sweep, "seed=0", f"hydra.launcher.name={name}")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        # an experience of this job takes ~0.25 s on a quiet machine: know the job id first, poll the first
        # checkpoint often and requeue at once, so that the job is preempted with four experiences still to run
        job_id = wait_for(lambda: squeue(name), 120, "the job in the queue")[0][0]
        ckpt = sweep / "0" / "checkpoints" / "task_0.ckpt"
        wait_for(ckpt.exists, 240, "the job to finish experience 0", interval=0.02)
        assert not (sweep / "0" / "checkpoints" / "task_4.ckpt").exists(), "job ended before it could be preempted"
        run(["scontrol", "requeue", job_id], check=True)
        wait_for(lambda: any(j[1] == "PENDING" for j in squeue(name)), 60, f"job {job_id} back in the queue")
        release(job_id)
        assert proc.wait(timeout=SWEEP_TIMEOUT_S) == 0, (tmp_path / "sweep.log").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    resumed = [p.name for p in (sweep / "0").glob("run_info.resume_*.json")]
    assert resumed, "the requeued job did not resume from a checkpoint"
    assert resumed[0] in {f"run_info.resume_{t}.json" for t in range(4)}, resumed  # with experiences left to run
    restarts = run(["scontrol", "show", "job", job_id]).stdout
    assert "Restarts=1" in restarts, restarts
    got = json.loads((sweep / "0" / "metrics.json").read_text())
    ref = json.loads((three_seeds / "0" / "metrics.json").read_text())
    assert got["complete"] is True
    # the same seed gives the same initial weights and data order, and each experience restarts from seed + t
    np.testing.assert_array_equal(np.array(got["acc_matrix"]), np.array(ref["acc_matrix"]))
