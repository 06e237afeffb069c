"""OmegaConf resolvers used by ``conf/`` (registered on import; cheap, no torch)."""

from __future__ import annotations

import functools
import re
import secrets
import time
from pathlib import Path

from omegaconf import OmegaConf

_TASK_CKPT = re.compile(r"^task_(\d+)\.ckpt$")


@functools.cache
def _stamp() -> str:
    """``YYYY-MM-DD_HH-MM-SS_xxxxxx``: this process's start time and 6 random hex digits (one value per process), so
    that two runs started in the same second get different default directories."""
    return time.strftime("%Y-%m-%d_%H-%M-%S") + "_" + secrets.token_hex(3)


def _is_last_checkpoint(ckpt: Path) -> bool:
    """Whether ``RUN/checkpoints/task_t.ckpt`` (or ``initial.ckpt``) is the last checkpoint of its run directory."""
    tasks = [int(m.group(1)) for p in ckpt.parent.iterdir() if (m := _TASK_CKPT.match(p.name))]
    if ckpt.name == "initial.ckpt":
        return not tasks
    m = _TASK_CKPT.match(ckpt.name)
    return bool(m) and int(m.group(1)) >= max(tasks, default=-1)


def _run_dir(resume: str | None, default: str) -> str:
    """``hydra.run.dir``: the run directory being resumed (``resume=RUN`` or its last ``checkpoints/*.ckpt``);
    ``default`` (a new directory) for a fresh run or a resume from an earlier checkpoint than the run's last, which
    would otherwise overwrite the later ones."""
    if not resume:
        return default
    p = Path(str(resume))
    if p.is_dir():
        return str(p)
    if not p.exists():  # cl.run reports it; no directory is made at the mistyped path
        return default
    if p.parent.name == "checkpoints" and _is_last_checkpoint(p):
        return str(p.parent.parent)
    return default


def _hydra_subdir(resume: str | None) -> str:
    """Kept for configs written before Hydra's record moved into ``cl.engine.run_dir``."""
    return ".hydra_resume" if resume else ".hydra"


def register() -> None:
    OmegaConf.register_new_resolver("cl_run_dir", _run_dir, replace=True)
    OmegaConf.register_new_resolver("cl_hydra_subdir", _hydra_subdir, replace=True)
    # cached on the config too: Hydra copies a sweep's resolver cache into each job (also a submitit job's process),
    # so every job resolves the sweep directory of its launcher
    OmegaConf.register_new_resolver("cl_stamp", _stamp, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("cl_package_dir", lambda: str(package_dir()), replace=True)
    OmegaConf.register_new_resolver("cl_asset", _asset, replace=True)


def _asset(name: str, fallback_dir: str) -> str:
    """``<package>/assets/<name>`` when the package ships it (found from any working directory, also after a
    non-editable install), else ``<fallback_dir>/<name>`` (a writable folder where it is made on first use)."""
    shipped = package_dir() / "assets" / str(name)
    return str(shipped) if shipped.is_file() else str(Path(str(fallback_dir)) / str(name))


def package_dir() -> Path:
    """The folder holding the package's own files (``conf/``, ``assets/``): ``cl/_package`` in an installed wheel
    (setup.py copies them there), else the source checkout's root."""
    here = Path(__file__).resolve().parent
    installed = here / "_package"
    return installed if (installed / "conf").is_dir() else here.parent


register()
