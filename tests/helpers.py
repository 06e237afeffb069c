"""Test helpers: compose ``conf/cl.yaml`` as ``python -m cl.run`` would, and run it in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import cl.resolvers  # noqa: F401

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# conf/cl.yaml's default preset is the offline default (experiment=coda_digits): tests compose the plain base config
# (finetune, vit_tiny) unless their overrides name a preset themselves (``experiment=...`` wins over this entry;
# Hydra refuses `experiment=null` for a non-null default, `~experiment` drops it).
BASE = "~experiment"
# CPU, one epoch of at most 3 batches, no progress bar: a whole 5-experience digits stream in seconds.
SHRINK = [
    BASE,
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false",
    "data.batch_size=32",
]


def cli_overrides(overrides: list[str]) -> list[str]:
    """The shrunk test config as ``python -m cl.run`` arguments, as ``compose_config`` builds it (overrides win over
    SHRINK)."""
    keys = {o.split("=")[0].lstrip("+~") for o in overrides}
    return [o for o in SHRINK if o.split("=")[0].lstrip("+~") not in keys] + overrides


def compose_config(overrides: list[str], run_dir: Path, shrink: bool = True, config_name: str = "cl") -> DictConfig:
    """Compose the real config with ``overrides`` (shrunk unless ``shrink=False``) and make ``run_dir`` Hydra's
    output directory, so that ``cl.experiment.run_experiment`` can run it in-process."""
    GlobalHydra.instance().clear()
    keys = {x.split("=")[0].lstrip("+~") for x in overrides}
    extra = [o for o in (SHRINK if shrink else [BASE]) if o.split("=")[0].lstrip("+~") not in keys]
    if config_name != "cl":  # BASE names conf/cl.yaml's preset group
        extra = [o for o in extra if o != BASE]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name=config_name, overrides=extra + overrides, return_hydra_config=True)
    run_dir = Path(run_dir)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


REPO = Path(__file__).resolve().parents[1]
# the fastest real run for subprocess tests: 2 experiences of 1 batch each, no logger
TINY = ["scenario.n_experiences=2", "+trainer.limit_train_batches=1", "logger=none"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m cl.run`` subprocess: this tree first on the path, one torch thread, no rank
    variables of an enclosing launcher."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID", "WORLD_SIZE"):
        env.pop(k, None)
    return env


def run_module(module: str, args: list[str], cwd: Path = REPO, timeout: float = 300, **popen: Any) -> Any:
    """``python -m module *args`` as a subprocess (``subprocess.CompletedProcess`` with text output)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", module, *args]
    env = popen.pop("env", None) or cli_env()
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **popen)


def run_cl(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cl.run``'s experiment in-process and return its metrics."""
    from cl.experiment import run_experiment

    return run_experiment(cfg)
