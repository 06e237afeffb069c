"""OmegaConf resolvers used by ``conf/`` (registered on import; cheap, no torch)."""

from __future__ import annotations

from omegaconf import OmegaConf


def _run_dir(resume: str | None, default: str) -> str:
    """``hydra.run.dir``: the run directory being resumed, else the default timestamped one."""
    return str(resume) if resume else default


def _hydra_subdir(resume: str | None) -> str:
    """``hydra.output_subdir``: a resume keeps the original ``.hydra`` record and writes its own beside it."""
    return ".hydra_resume" if resume else ".hydra"


def register() -> None:
    OmegaConf.register_new_resolver("cl_run_dir", _run_dir, replace=True)
    OmegaConf.register_new_resolver("cl_hydra_subdir", _hydra_subdir, replace=True)


register()
