"""``hydra/launcher=local`` (conf/hydra/launcher/local.yaml, submitit's local executor): a 2-seed sweep of a shrunk
``cl.run`` runs as submitit jobs on this machine (no scheduler), each writes a complete run folder, and
``python -m experiments.aggregate`` makes the mean ± std table of the two seeds. Bounded in time (the sweep is killed
with its process group if it overruns)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli_overrides

REPO = Path(__file__).resolve().parents[2]
SWEEP_TIMEOUT_S = 300
SHRUNK = ["scenario.n_experiences=2", "+trainer.limit_train_batches=2", "logger=none", "backbone.depth=1"]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("SLURM_JOB_ID", "SLURM_NTASKS", "LOCAL_RANK", "RANK"):
        env.pop(k, None)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its submitit jobs
        out, err = proc.communicate()
        pytest.fail(f"{cmd[2]} did not finish within {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.timeout(SWEEP_TIMEOUT_S + 120)
def test_two_seed_sweep_through_the_local_launcher_aggregates(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "cl.run", "-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}"]
    res = _run([*cmd, "hydra.launcher.timeout_min=5", *cli_overrides(SHRUNK), "seed=0,1"], SWEEP_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-4000:]
    jobs = sorted(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())  # local job id = process id
    assert len(jobs) == 2, jobs  # two submitit jobs, one per seed, each with its pickles and logs
    for job in jobs:
        assert any(p.name.endswith("_result.pkl") for p in job.iterdir()), sorted(q.name for q in job.iterdir())
    for i in range(2):
        metrics = json.loads((sweep / str(i) / "metrics.json").read_text())
        assert metrics["complete"] is True and metrics["seed"] == i
        assert sorted(p.name for p in (sweep / str(i) / "checkpoints").iterdir())[-1] == "task_1.ckpt"

    agg = _run([sys.executable, "-m", "experiments.aggregate", str(sweep), "--strict"], 120)
    assert agg.returncode == 0, agg.stderr
    with (sweep / "aggregate" / "summary.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert (row["method"], row["n_runs"], row["seeds"]) == ("finetune", "2", "0 1")
    accs = [json.loads((sweep / str(i) / "metrics.json").read_text())["avg_acc"] for i in range(2)]
    assert float(row["avg_acc_mean"]) == pytest.approx(np.mean(accs))
    assert float(row["avg_acc_std"]) == pytest.approx(np.std(accs, ddof=1))
    assert (sweep / "aggregate" / "summary.md").read_text().count("| finetune |") == 1
