"""Building one Lightning ``Trainer`` per experience, with the per-experience progress bar and logger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig


class ExperienceProgressBar(TQDMProgressBar):
    """TQDM bar whose description names the experience: ``exp 2/5 · epoch 1``."""

    def __init__(self, experience: int, num_experiences: int, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.label = f"exp {experience + 1}/{num_experiences}"

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"{self.label} · epoch {trainer.current_epoch}")


def build_callbacks(cfg: DictConfig) -> dict[str, Any]:
    """The run-long callbacks of ``cfg.callbacks`` (name -> ``_target_`` config; null entries are skipped)."""
    out = {}
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is not None and cb_cfg.get("_target_"):
            out[str(name)] = instantiate(cb_cfg)
    return out


def make_trainer(
    trainer_cfg: DictConfig,
    logger_cfg: DictConfig | None,
    run_dir: Path,
    experience: int,
    num_experiences: int,
    extra_callbacks: list[Any] | None = None,
) -> Any:
    """Instantiate ``trainer_cfg`` for one experience (logger version ``exp_{t}`` under ``run_dir/logs``)."""
    logger: Any = False
    if logger_cfg is not None and logger_cfg.get("_target_"):
        logger = instantiate(logger_cfg, save_dir=str(run_dir), name="logs", version=f"exp_{experience}")
    callbacks = list(extra_callbacks or [])
    if trainer_cfg.get("enable_progress_bar", True):
        callbacks.append(ExperienceProgressBar(experience, num_experiences))
    # the engine shards the training data itself (cl/engine/distributed.py), identically for any number of processes
    return instantiate(
        trainer_cfg, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir), use_distributed_sampler=False
    )
