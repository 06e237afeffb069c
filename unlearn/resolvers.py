"""OmegaConf resolvers of ``conf/unlearn.yaml`` (registered on import; cheap, no torch)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf


def writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (or, if it does not exist yet, in its nearest existing parent)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        return False
    try:
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _unlearn_root(checkpoint: str | None, log_dir: str) -> str:
    """``<the checkpoint's cl.run directory>/unlearn``; ``<log_dir>/unlearn/<run name>`` when that directory is
    read-only (a shared or archived run); ``<log_dir>/unlearn`` when no checkpoint is given."""
    if not checkpoint:
        return str(Path(log_dir) / "unlearn")
    p = Path(str(checkpoint))
    run = p if p.is_dir() else (p.parent.parent if p.parent.name == "checkpoints" else p.parent)
    if run.is_dir() and not writable(run / "unlearn"):
        return str(Path(log_dir) / "unlearn" / run.name)
    return str(run / "unlearn")


def register() -> None:
    OmegaConf.register_new_resolver("unlearn_root", _unlearn_root, replace=True)


register()
