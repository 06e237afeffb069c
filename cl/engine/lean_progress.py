"""The progress bar of the lean loop (:class:`cl.engine.lean.LeanTrainer`): one tqdm bar per epoch named after the
experience (``exp 2/5 · epoch 1``) with the step loss, redrawn at most every ``min_interval`` seconds (tqdm's
``mininterval``) and at the end of each epoch, as :class:`cl.engine.trainer.ExperienceProgressBar` does for
Lightning's Trainer."""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch.callbacks import Callback

from cl.analysis.flops import flop_free
from cl.engine.trainer import step_loss


class LeanProgressBar(Callback):
    """A tqdm bar over the training batches of each epoch (see the module docstring)."""

    def __init__(self, label: str, min_interval: float = 0.1) -> None:
        self.label, self.min_interval = label, min_interval
        self.bar: Any = None
        self._last = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        from tqdm.auto import tqdm

        self._close()
        desc = f"{self.label} · epoch {trainer.current_epoch}".lstrip(" ·")
        self.bar = tqdm(
            total=trainer.num_training_batches, desc=desc, mininterval=self.min_interval, file=sys.stdout,
            dynamic_ncols=True, leave=True,
        )  # fmt: skip

    @flop_free
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        if now - self._last >= self.min_interval or self.bar.n + 1 >= (self.bar.total or 0):
            self._last = now
            loss = step_loss(outputs)
            if loss is not None:
                self.bar.set_postfix({"train/loss": f"{float(loss):.3f}"}, refresh=False)
        self.bar.update(1)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
