"""Building one Lightning ``Trainer`` per experience, with the per-experience progress bar, logger and step loss.

The training loss of every step (``train/loss``: what the method's ``training_step`` returns) is logged by
:class:`StepLossLogger` from the step's output rather than by ``self.log`` in the method: Lightning's ``self.log``
costs about 1 ms per call on CPU (its result collection copies its metadata on every call), ~8% of a small CNN's
training step, while the loss is already in the step's output. Rows go to every logger of the trainer every
``trainer.log_every_n_steps`` steps (the CSV logger writes them to disk every 100 steps and at the end of ``fit``),
with the same ``step`` and ``epoch`` columns Lightning's own step logging writes; the progress bar shows the loss.

Cost of a Trainer per experience: :func:`make_trainer` builds it from the config's plain values (``get_class`` and a
call; Hydra's ``instantiate`` merges and deep-copies the config node first, ~6 ms a Trainer). What remains is
Lightning's own ``Trainer.__init__`` (~13 ms on the 2-core CI machine, half of it the scan of installed packages' entry
points for external callback factories, ``lightning.fabric.utilities.registry._load_external_callbacks``), next to
seconds of training per experience; measured in experiments/bench/stream_overhead.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf


def step_loss(outputs: Any) -> torch.Tensor | None:
    """The loss in a training step's output (Lightning passes ``{"loss": ...}`` in automatic optimization)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss if isinstance(loss, torch.Tensor) else None


class StepLossLogger(Callback):
    """Logs ``train/loss`` of every ``trainer.log_every_n_steps``-th training step to the trainer's loggers, with the
    other tensors of the step's output (``ContinualMethod.step_metrics``, e.g. ``train/prompt_loss``)."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.loggers or trainer.global_step % max(1, int(trainer.log_every_n_steps)):
            return
        loss = step_loss(outputs)
        if loss is None:
            return
        row = {"train/loss": float(loss), "epoch": trainer.current_epoch}
        if isinstance(outputs, Mapping):  # the method's other step metrics (ContinualMethod.step_metrics)
            row.update({k: float(v) for k, v in outputs.items() if k != "loss" and isinstance(v, torch.Tensor)})
        for logger in trainer.loggers:  # step numbering as Lightning's step logging (0-based batches stepped)
            logger.log_metrics(row, step=trainer.global_step - 1)


class ExperienceProgressBar(TQDMProgressBar):
    """TQDM bar whose description names the experience (``exp 2/5 · epoch 1``) and shows the step loss; redrawn at
    most every ``min_interval`` seconds (and at the end of each epoch) instead of after every batch."""

    def __init__(self, experience: int, num_experiences: int, refresh_rate: int = 1, min_interval: float = 0.1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.label = f"exp {experience + 1}/{num_experiences}"
        self.min_interval = min_interval
        self._last_draw = 0.0
        self._loss: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"{self.label} · epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._loss = step_loss(outputs)
        now = time.monotonic()
        total = self.train_progress_bar.total if self.train_progress_bar is not None else None
        if now - self._last_draw < self.min_interval and (total is None or batch_idx + 1 < total):
            return
        self._last_draw = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        if self._loss is not None:
            items["train/loss"] = float(self._loss)
        return items


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
    """Instantiate ``trainer_cfg`` (Lightning's ``Trainer``) for one experience, logger version ``exp_{t}`` under
    ``run_dir/logs``."""
    quiet_lightning_notices()
    logger: Any = False
    callbacks = list(extra_callbacks or [])
    if logger_cfg is not None and logger_cfg.get("_target_"):
        logger = build(logger_cfg, save_dir=str(run_dir), name="logs", version=f"exp_{experience}")
        callbacks.append(StepLossLogger())
    if trainer_cfg.get("enable_progress_bar", True):
        callbacks.append(ExperienceProgressBar(experience, num_experiences))
    # the engine shards the training data itself (cl/engine/distributed.py), identically for any number of processes
    return build(
        trainer_cfg, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir), use_distributed_sampler=False
    )


def quiet_lightning_notices() -> None:
    """Lightning's informational notices ("GPU available: ...", "`Trainer.fit` stopped: ...", tips) would repeat at
    every experience's Trainer: show its warnings only, unless the user set that logger's level."""
    notices = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if notices.level == logging.NOTSET:
        notices.setLevel(logging.WARNING)


def build(node: DictConfig | Mapping[str, Any], **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)`` for a flat ``_target_`` node, without Hydra's merge and deep copy of the node:
    the target class called with the node's resolved values (a nested ``_target_`` value, e.g. ``trainer.strategy``,
    goes through ``instantiate``)."""
    settings = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    target = get_class(str(settings.pop("_target_")))
    for key, value in settings.items():
        if isinstance(value, dict) and "_target_" in value:
            settings[key] = instantiate(value)
    return target(**settings, **kwargs)
