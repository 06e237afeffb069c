"""scripts/slurm_local.sh: the node comes up idle with the machine's real CPUs/memory, srun/sbatch work, oversized
requests are refused at submission, start is idempotent and stop ends only the daemons it started."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.slurm.conftest import cluster_env
from tests.slurm.slurm_testlib import SCRIPT, daemon_pids, pid_alive, run, wait_for

pytestmark = pytest.mark.slurm


def _meminfo_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def _nodes() -> list[str]:
    return run(["sinfo", "-h", "-N", "-o", "%N|%t|%c|%m"], check=True).stdout.split()


def test_node_idle_with_real_resources(slurm_cluster: dict[str, str]) -> None:
    # the cluster is shared by the session's tests: jobs of earlier tests may still be completing (state "mix")
    wait_for(lambda: [n.split("|")[1] for n in _nodes()] == ["idle"], 180, "the node to be idle")
    out = _nodes()
    assert len(out) == 1, out
    node, state, cpus, mem = out[0].split("|")
    assert node == socket.gethostname().split(".")[0]
    assert state == "idle"
    assert int(cpus) == os.cpu_count()
    assert 0.9 * _meminfo_mb() <= int(mem) <= _meminfo_mb()


def test_srun_and_sbatch_wrap(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    assert run(["srun", "hostname"], timeout=60, check=True).stdout.strip() == socket.gethostname()
    out = tmp_path / "job.out"
    job_id = run(
        ["sbatch", "--parsable", "-o", str(out), "--wrap", "echo ran $SLURM_JOB_ID on $SLURM_CPUS_ON_NODE cpus"],
        check=True,
    ).stdout.strip()
    wait_for(lambda: out.exists() and out.read_text().strip(), 60, f"sbatch job {job_id} output")
    assert out.read_text().split()[:2] == ["ran", job_id]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cpus-per-task", str((os.cpu_count() or 1) + 1)], "More processors requested than permitted"),
        (["--mem", f"{_meminfo_mb() * 2}M"], "Memory specification can not be satisfied"),
    ],
)
def test_oversized_request_refused_at_submission(slurm_cluster: dict[str, str], flags: list[str], message: str) -> None:
    before = {j[0] for j in run(["squeue", "-h", "-o", "%i"]).stdout.split()}
    res = run(["sbatch", *flags, "--wrap", "true"])
    assert res.returncode != 0
    assert message in res.stderr
    assert {j[0] for j in run(["squeue", "-h", "-o", "%i"]).stdout.split()} == before


def test_start_twice_keeps_the_same_daemons(slurm_cluster: dict[str, str]) -> None:
    state_dir = Path(slurm_cluster["SLURM_LOCAL_DIR"])
    before = daemon_pids(state_dir)
    assert set(before) == {"munged", "slurmctld", "slurmd"}
    res = run(["bash", str(SCRIPT), "start"], timeout=120, env=slurm_cluster)
    assert res.returncode == 0, res.stderr
    assert "already running" in res.stderr
    assert daemon_pids(state_dir) == before


def test_stop_ends_only_its_own_daemons(
    slurm_cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second cluster (own dir and ports) is stopped; the session cluster and an unrelated process survive."""
    other_dir = Path(tmp_path_factory.mktemp("slurm2", numbered=True))
    env = {**os.environ, **cluster_env(other_dir), "SLURM_CONF": str(other_dir / "etc" / "slurm.conf")}
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        started = run(["bash", str(SCRIPT), "start"], timeout=120, env=env)
        assert started.returncode == 0, started.stderr
        pids = daemon_pids(other_dir)
        assert set(pids) == {"munged", "slurmctld", "slurmd"}
        # a pid file pointing at a process that is not the daemon must not get that process killed
        (other_dir / "run" / "spare.pid").write_text(str(bystander.pid))
        stopped = run(["bash", str(SCRIPT), "stop"], timeout=120, env=env)
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: not any(pid_alive(p) for p in pids.values()), 15, "second cluster's daemons to exit")
        assert bystander.poll() is None
        assert all(pid_alive(p) for p in daemon_pids(Path(slurm_cluster["SLURM_LOCAL_DIR"])).values())
        assert run(["sinfo", "-h", "-o", "%t"], check=True).stdout.strip() in {"idle", "mix", "alloc"}
        again = run(["bash", str(SCRIPT), "stop"], timeout=60, env=env)
        assert again.returncode == 0, again.stderr
    finally:
        bystander.kill()
        bystander.wait()
        run(["bash", str(SCRIPT), "stop"], timeout=120, env=env)
