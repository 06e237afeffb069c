"""Helpers for the tests that drive the local single-node SLURM cluster (``scripts/slurm_local.sh``).

Every wait is bounded; :func:`wait_for` raises with a description of what did not happen in time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
CONF_DIR = REPO / "conf"
PYTHON = sys.executable

# A throwaway Hydra app: ``steps`` steps of ``step_s`` seconds, one marker file per step in its output dir; on a
# restart (requeue) it resumes after the last marker, like cl.run resumes after the last task checkpoint.
APP_PY = """
import json, os, time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=".", config_name="app")
def main(cfg: DictConfig) -> float:
    out = Path(HydraConfig.get().runtime.output_dir)
    done = sorted(int(p.stem.split("_")[1]) for p in out.glob("step_*.txt"))
    start = done[-1] + 1 if done else 0
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    for k in range(start, cfg.steps):
        time.sleep(cfg.step_s)
        (out / f"step_{k}.txt").write_text(f"{restarts}\\n")
    info = {"seed": cfg.seed, "start": start, "restarts": restarts, "job_id": os.environ.get("SLURM_JOB_ID"),
            "array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}
    (out / "result.json").write_text(json.dumps(info))
    return float(cfg.seed)


if __name__ == "__main__":
    main()
"""


def write_app(folder: Path) -> Path:
    """Write the throwaway app + its config (which finds the project's conf/hydra/launcher via searchpath)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(APP_PY)
    (folder / "app.yaml").write_text(
        f"seed: 0\nsteps: 2\nstep_s: 0.1\nhydra:\n  searchpath:\n    - file://{CONF_DIR}\n"
    )
    return folder / "app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], timeout: float = 30, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, **kw)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"not within {timeout:.0f}s: {what}")


def squeue(name: str | None = None) -> list[tuple[str, str, str]]:
    """(job id, state, reason) of the cluster's jobs, optionally only those called ``name``."""
    cmd = ["squeue", "-h", "-o", "%i|%T|%r"] + (["-n", name] if name else [])
    out = run(cmd, timeout=15).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def node_states() -> set[str]:
    """The states ``sinfo`` reports for the cluster's nodes (``idle``, ``completing``, ``allocated``, ...)."""
    return {line.strip() for line in run(["sinfo", "-h", "-N", "-o", "%T"], timeout=15).stdout.splitlines()}


def release(job_id: str) -> None:
    """A requeued job waits ~2 min (Reason=BeginTime: SLURM's guard against relaunching it while slurmd still revokes
    the credential of its killed run); let it start now, once the node is idle again (slurmd has processed the kill)
    and two seconds later (revocations have one-second resolution). Released earlier, the relaunch can fail with "Job
    credential revoked" and the job ends without running (seen once in CI, 2026-11-29)."""
    wait_for(lambda: node_states() == {"idle"}, 60, f"the node done with the killed run of job {job_id}")
    time.sleep(2)
    run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=15, check=True)


def daemon_pids(state_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (state_dir / "run").glob("*.pid") if not p.stem.endswith(".self")}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
