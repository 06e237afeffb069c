"""OmegaConf resolvers of ``conf/unlearn.yaml`` (registered on import; cheap, no torch)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def _unlearn_root(checkpoint: str | None, log_dir: str) -> str:
    """``<the checkpoint's cl.run directory>/unlearn``, or ``<log_dir>/unlearn`` when no checkpoint is given."""
    if not checkpoint:
        return str(Path(log_dir) / "unlearn")
    p = Path(str(checkpoint))
    run = p if p.is_dir() else (p.parent.parent if p.parent.name == "checkpoints" else p.parent)
    return str(run / "unlearn")


def register() -> None:
    OmegaConf.register_new_resolver("unlearn_root", _unlearn_root, replace=True)


register()
