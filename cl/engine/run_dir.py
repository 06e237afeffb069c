"""A run owns its directory: an OS lock for the whole run, records written after the checks, failures recorded.

* :func:`claim` takes an exclusive ``flock`` on ``<run dir>/.lock`` (kept open until the process ends or
  :func:`release`); a second run into a held directory stops at once with :class:`RunDirTaken` naming the holder.
  Only the process that writes files (global rank 0) claims: the other DDP ranks work in rank 0's directory.
* Hydra writes nothing before the run's checks (``hydra.output_subdir: null`` in ``conf/hydra/default.yaml``);
  :func:`write_hydra_record` writes ``.hydra/`` (a fresh run) or ``.hydra_resume/`` once the directory is ours.
* :func:`clear_stale_records` removes a failed first attempt's records before a fresh run writes its own, and
  :func:`remove_orphaned_tmp` the temporary files of writes killed midway (cl/utils/atomic.py names them ``.*.tmp``).
* :func:`write_failure` records an error in ``failed.json`` (what ``experiments.aggregate`` lists as failed).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from cl.errors import RunDirTaken
from cl.utils.atomic import write_json, write_text

LOCK_NAME = ".lock"
FAILED_NAME = "failed.json"
# what a cl.run attempt writes at the top of its run directory (checkpoints/ and unlearn/ are never removed here)
RECORD_FILES = ("config.yaml", "metrics.json", "acc_matrix.csv", "acc_matrix.png", FAILED_NAME)
RECORD_DIRS = (".hydra", ".hydra_resume", "logs")
_held: dict[Path, int] = {}


def claim(run_dir: Path, what: str = "hydra.run.dir") -> None:
    """Hold an exclusive lock on ``run_dir`` until :func:`release` (or the end of the process)."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirTaken(
            f"{what}={str(run_dir)!r} is in use by another run ({holder}); nothing was written. Wait for that run "
            f"to end, or choose another {what}"
        ) from err
    os.ftruncate(fd, 0)
    holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    os.pwrite(fd, holder.encode(), 0)
    _held[run_dir] = fd


def release(run_dir: Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock; the file stays (removing it would race a new claim)


def is_held_here(run_dir: Path) -> bool:
    return Path(run_dir).resolve() in _held


def remove_orphaned_tmp(run_dir: Path) -> list[Path]:
    """Delete ``.*.tmp`` files left by killed atomic writes in the run directory and its ``checkpoints/``."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def clear_stale_records(run_dir: Path) -> None:
    """Before a fresh run (no checkpoint in the directory): drop an earlier failed attempt's records."""
    for name in RECORD_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for p in run_dir.glob("run_info*.json"):
        p.unlink()
    for name in RECORD_DIRS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def write_hydra_record(run_dir: Path, subdir: str, task_cfg: Any) -> None:
    """What Hydra itself would write into ``run_dir/subdir``: ``config.yaml``, ``hydra.yaml``, ``overrides.yaml``."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    out = run_dir / subdir
    write_text(out / "config.yaml", OmegaConf.to_yaml(task_cfg))
    write_text(out / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})))
    write_text(out / "overrides.yaml", OmegaConf.to_yaml(hc.overrides.task))


def command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # Hydra not initialised (a library call)
        return []


def write_failure(run_dir: Path, err: BaseException, overrides: list[str] | None = None) -> Path:
    """``failed.json``: the error, its type and traceback, and the command-line overrides of the failed run."""
    info = {
        "error": str(err),
        "type": type(err).__name__,
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__))[-8000:],
        "overrides": overrides if overrides is not None else command_line_overrides(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = run_dir / FAILED_NAME
    write_json(path, info)
    return path
