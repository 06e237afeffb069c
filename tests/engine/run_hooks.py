"""Test-only run-long callbacks given on the command line (``+callbacks.hook._target_=tests.engine.run_hooks.X``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


class WaitForFile(Callback):
    """Hold the run at the start of experience 0's training until ``path`` exists (at most ``timeout`` s), after
    writing ``ready`` so that a test knows the run holds its directory."""

    def __init__(self, path: str, ready: str, timeout: float = 120.0) -> None:
        self.path, self.ready, self.timeout = Path(path), Path(ready), timeout

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if int(pl_module.experience_index) != 0:
            return
        self.ready.write_text("ready")
        end = time.monotonic() + self.timeout
        while not self.path.exists() and time.monotonic() < end:
            time.sleep(0.1)


class RaiseAt(Callback):
    """Fail with ``RuntimeError`` at the start of training experience ``experience``."""

    def __init__(self, experience: int = 0) -> None:
        self.experience = experience

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if int(pl_module.experience_index) == self.experience:
            raise RuntimeError(f"test hook: failing in experience {self.experience}")


class SignalAt(Callback):
    """Send ``signum`` to this process after ``step`` batches of ``experience`` (once per ``marker`` file)."""

    def __init__(self, experience: int, step: int, marker: str, signum: int = 2) -> None:
        self.experience, self.step, self.marker, self.signum = experience, step, Path(marker), signum

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        import os

        if int(pl_module.experience_index) == self.experience and batch_idx + 1 == self.step:
            if not self.marker.exists():
                self.marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), self.signum)
