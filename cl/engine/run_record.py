"""What every run directory records for reproducibility: resolved config, seed, git revision, package versions."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from cl.utils.atomic import write_json, write_text

PACKAGES = (
    "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "timm", "peft", "torchmetrics", "avalanche-lib",
    "numpy", "scikit-learn", "hydra-submitit-launcher", "submitit", "triton",
)  # fmt: skip
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def git_revision(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The commit hash and whether the work tree had uncommitted changes (None values outside a git checkout)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if rev.returncode:
        return {"commit": None, "dirty": None}
    return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _resume_record_name(run_dir: Path, resumed_from: int) -> str:
    """``run_info.resume_<t>.json`` (``resume_initial`` before experience 0); a later resume from the same experience
    gets ``run_info.resume_<t>.2.json``, ``.3``, ... so that no resume record is overwritten."""
    stem = f"run_info.resume_{'initial' if resumed_from < 0 else resumed_from}"
    name, n = f"{stem}.json", 1
    while (run_dir / name).exists():
        n += 1
        name = f"{stem}.{n}.json"
    return name


def write_run_record(
    run_dir: Path, config_yaml: str, seed: int, resumed_from: int | None = None, extra: dict[str, Any] | None = None
) -> None:
    """Write ``config.yaml`` (a fresh run: always, the record must describe what produces the metrics; a resume: only
    if absent, the experiment is the saved one) and ``run_info.json`` (a resume: ``run_info.resume_<t>.json``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if resumed_from is None or not (run_dir / "config.yaml").exists():
        write_text(run_dir / "config.yaml", config_yaml)
    info = {
        "seed": seed,
        "git": git_revision(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": sys.argv,
        **(extra or {}),
    }
    name = "run_info.json" if resumed_from is None else _resume_record_name(run_dir, resumed_from)
    write_json(run_dir / name, info)
