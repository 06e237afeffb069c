"""conf/hydra/launcher/slurm.yaml through hydra-submitit-launcher on the local cluster, with a throwaway Hydra app
(independent of cl.run): a 3-seed sweep, refusals at submission, and requeue after preemption (USR2, the signal
submitit handles) and after ``scontrol requeue`` (SIGTERM, then SIGKILL after KillWait)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm.slurm_testlib import PYTHON, release, run, squeue, wait_for, write_app

pytestmark = pytest.mark.slurm

SWEEP_TIMEOUT_S = 180


@pytest.fixture
def app(slurm_cluster: dict[str, str], tmp_path: Path) -> Path:
    return write_app(tmp_path / "app")


def _launch(app: Path, sweep_dir: Path, *overrides: str) -> subprocess.Popen[str]:
    cmd = [PYTHON, str(app), "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}", *overrides]
    log = (sweep_dir.parent / f"{sweep_dir.name}.log").open("w")
    return subprocess.Popen(cmd, cwd=app.parent, stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _results(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/result.json"))]


def test_three_seed_sweep_runs_as_slurm_array(app: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = run(
        [PYTHON, str(app), "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}", "seed=0,1,2"],
        timeout=SWEEP_TIMEOUT_S,
        cwd=app.parent,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = _results(sweep)
    assert sorted(r["seed"] for r in results) == [0, 1, 2]
    assert len({r["job_id"] for r in results}) == 3
    assert sorted(r["array_task"] for r in results) == ["0", "1", "2"]
    script = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    for flag in ("--requeue", "--signal=USR2@120", "--cpus-per-task=1", "--mem=4GB", "--time=60"):
        assert f"#SBATCH {flag}" in script


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.cpus_per_task=999", "More processors requested than permitted"),
        ("hydra.launcher.mem_gb=100000", "Memory specification can not be satisfied"),
        ("no_such_key=1,2", "Could not override 'no_such_key'"),
    ],
)
def test_bad_request_fails_at_submission(app: Path, tmp_path: Path, override: str, message: str) -> None:
    before = squeue()
    res = run(
        [PYTHON, str(app), "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 's'}", override],
        timeout=60,
        cwd=app.parent,
    )
    assert res.returncode != 0
    assert message in res.stderr
    assert squeue() == before


@pytest.mark.parametrize("how", ["usr2", "scontrol_requeue"])
def test_preempted_job_is_requeued_and_resumes(
    app: Path, tmp_path: Path, launched: list[subprocess.Popen[str]], how: str
) -> None:
    name = f"pre{uuid.uuid4().hex[:8]}"
    sweep = tmp_path / "sweep"
    steps = 8
    launched.append(_launch(app, sweep, "seed=3", f"steps={steps}", "step_s=1", f"hydra.launcher.name={name}"))
    wait_for(lambda: (sweep / "0" / "step_1.txt").exists(), 90, "two steps of the job")
    job_id = squeue(name)[0][0]
    if how == "usr2":  # what SLURM sends signal_delay_s before the time limit; submitit checkpoints + requeues
        run(["scancel", "--signal=USR2", job_id], check=True)
    else:  # what preemption does: SIGTERM (submitit ignores it), SIGKILL after KillWait=5 s, back to the queue
        run(["scontrol", "requeue", job_id], check=True)
    wait_for(lambda: any(j[1] == "PENDING" for j in squeue(name)), 30, f"job {job_id} requeued (PENDING)")
    assert not (sweep / "0" / "result.json").exists()
    release(job_id)
    assert launched[0].wait(timeout=SWEEP_TIMEOUT_S) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    (result,) = _results(sweep)
    assert result["restarts"] == 1
    assert 2 <= result["start"] < steps
    markers = {int(p.stem.split("_")[1]): int(p.read_text()) for p in (sweep / "0").glob("step_*.txt")}
    assert sorted(markers) == list(range(steps))
    assert {markers[k] for k in range(result["start"])} == {0}
    assert {markers[k] for k in range(result["start"], steps)} == {1}
