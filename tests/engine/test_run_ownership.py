"""A run owns its directory and its records describe what produced its metrics (issue 18, items 1-2 and 'Smaller').

* two ``python -m cl.run`` processes into one ``hydra.run.dir``: the second stops at once (exit 2, names the holder)
  and writes nothing; two runs started together get different default directories;
* a re-run with other overrides into a finished run's directory is refused before Hydra's record is rewritten;
* a failed first attempt's records are replaced by the successful re-run's; files respect the umask; ``run.log`` holds
  the console; orphaned ``.tmp`` files are removed; a second resume from one experience keeps both records.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, TINY, cli_env, cli_overrides, compose_config, run_cl, run_module

HOOK = "tests.engine.run_hooks"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended early: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > end:
            raise AssertionError("the first run never reached training")
        time.sleep(0.2)


@pytest.mark.timeout(1500)
def test_second_run_into_a_held_directory_stops_at_once(tmp_path):
    run_dir, release, ready = tmp_path / "run", tmp_path / "release", tmp_path / "ready"
    hold = [f"+callbacks.hold._target_={HOOK}.WaitForFile", f"+callbacks.hold.path={release}",
            f"+callbacks.hold.ready={ready}"]  # fmt: skip
    cmd = [sys.executable, "-m", "cl.run", f"hydra.run.dir={run_dir}", *cli_overrides([*TINY, *hold])]
    first = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, first, timeout=600)
        record = (run_dir / ".hydra" / "config.yaml").read_bytes()
        second = run_module("cl.run", [f"hydra.run.dir={run_dir}", *cli_overrides([*TINY, "seed=1"])], timeout=500)
        assert second.returncode == 2, second.stderr[-3000:]
        assert "is in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
        assert (run_dir / ".hydra" / "config.yaml").read_bytes() == record  # nothing of the second run written
    finally:
        release.write_text("go")
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seed"] == 0 == yaml.safe_load((run_dir / "config.yaml").read_text())["seed"]
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["seed"] == 0


def test_runs_started_together_get_different_default_directories(tmp_path):
    cmd = [sys.executable, "-m", "cl.run", "--cfg", "all", "--resolve", f"paths.log_dir={tmp_path}"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, text=True) for _ in range(2)]
    dirs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        run = yaml.safe_load(out)["hydra"]["run"]["dir"]
        assert run.startswith(f"{tmp_path}/runs/")
        dirs.append(run)
    assert dirs[0] != dirs[1]


@pytest.mark.timeout(600)
def test_rerun_with_other_overrides_is_refused_before_any_record_is_rewritten(tmp_path):
    run_dir = tmp_path / "run"
    run_cl(compose_config(TINY, run_dir))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert run_dir / ".hydra" / "config.yaml" in before
    again = run_module("cl.run", [f"hydra.run.dir={run_dir}", *cli_overrides([*TINY, "seed=1"])], timeout=300)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "already holds a run with another config (seed: 0 in the run, 1 given)" in again.stderr
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


@pytest.mark.timeout(600)
def test_failed_first_attempt_is_replaced_by_the_rerun(tmp_path):
    run_dir = tmp_path / "run"
    fail = [f"+callbacks.fail._target_={HOOK}.RaiseAt", "seed=1"]
    with pytest.raises(RuntimeError, match="test hook"):
        run_cl(compose_config([*TINY, *fail], run_dir))
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["type"] == "RuntimeError" and "test hook" in failed["error"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 1
    (run_dir / ".metrics.json.orphan.tmp").write_text("{")  # a write killed midway
    metrics = run_cl(compose_config(TINY, run_dir))
    assert metrics["seed"] == 0 and metrics["complete"] is True
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 0
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["seed"] == 0
    assert "fail" not in yaml.safe_load((run_dir / "config.yaml").read_text())["callbacks"]
    assert not (run_dir / "failed.json").exists() and not (run_dir / ".metrics.json.orphan.tmp").exists()


@pytest.mark.timeout(600)
def test_files_respect_the_umask_and_run_log_holds_the_console(tmp_path):
    run_dir = tmp_path / "run"
    old = os.umask(0o022)
    try:
        run_cl(compose_config(TINY, run_dir))
    finally:
        os.umask(old)
    for name in ("metrics.json", "config.yaml", "run_info.json", "checkpoints/task_1.ckpt", ".hydra/config.yaml"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o644, name
    log = (run_dir / "run.log").read_text()
    assert "final average accuracy" in log and f"run directory: {run_dir}" in log
    assert "\r" not in log and "\x1b[" not in log


@pytest.mark.timeout(600)
def test_a_second_resume_from_the_same_experience_keeps_both_records(tmp_path):
    run_dir = tmp_path / "run"
    run_cl(compose_config(TINY, run_dir))
    for _ in range(2):
        (run_dir / "checkpoints" / "task_1.ckpt").unlink()
        run_cl(compose_config(TINY, run_dir))
    names = sorted(p.name for p in run_dir.glob("run_info*.json"))
    assert names == ["run_info.json", "run_info.resume_0.2.json", "run_info.resume_0.json"]
    assert re.search(r"run directory: ", (run_dir / "run.log").read_text())


def test_a_sweep_job_in_its_own_process_resolves_the_launchers_directory():
    """Hydra copies the sweep's resolver cache into each job's config (submitit jobs run in other processes)."""
    from omegaconf import OmegaConf

    from cl.resolvers import _stamp

    launcher = OmegaConf.create({"dir": "${cl_stamp:}"})
    stamp = launcher.dir
    _stamp.cache_clear()  # a new process
    job = OmegaConf.create({"dir": "${cl_stamp:}"})
    OmegaConf.copy_cache(from_config=launcher, to_config=job)
    assert job.dir == stamp
    assert OmegaConf.create({"dir": "${cl_stamp:}"}).dir != stamp  # without the launcher's cache: its own stamp
