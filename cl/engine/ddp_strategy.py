"""The DDP strategy of ``conf/trainer/ddp*.yaml``: Lightning's ``DDPStrategy`` with a SIGTERM that stops every rank at
the same training step (see :class:`DDPStrategy`; the engine's DDP design is in ``cl/engine/distributed.py``)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from lightning.pytorch.strategies import DDPStrategy as _LightningDDP
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cl.engine.distributed import any_rank, is_global_zero


def _release_child_observer() -> None:
    """Rank 0 started from a shell: stop Lightning's child-process observer from SIGKILLing this process when a rank
    it started exits first with 143 (both are stopping after a SIGTERM; the exit status must stay 143)."""
    try:
        from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    except ImportError:  # pragma: no cover - another Lightning layout: nothing to release
        return
    for thread in threading.enumerate():
        if isinstance(thread, _ChildProcessObserver):
            thread._child_processes = []  # its next poll sees no child and ends without killing


class DDPStrategy(_LightningDDP):
    """Lightning's ``DDPStrategy`` whose SIGTERM stops every rank at the same training step (``conf/trainer/ddp*``).

    Lightning's own handler sets each rank's ``received_sigterm`` when the signal arrives there and each rank raises at
    its next batch end, so ranks signalled at different moments of a step stop at different steps and one of them dies
    in the next collective ("Connection closed by peer"); it also broadcasts from inside the signal handler. Here, once
    training starts, SIGTERM only sets a flag (and calls the handler that was installed before ``fit``: the engine's
    :class:`SigtermLatch`); at the start of every training step all ranks OR their flags (one 1-element all-reduce) and,
    if any rank was signalled, all raise ``SIGTERMException`` before the step, which the engine turns into
    :class:`cl.engine.loop.Preempted` (exit 143). Tested: tests/engine/test_ddp_sigterm.py.
    """

    def setup(self, trainer: Any) -> None:
        self._sigterm_flag = False
        self._handler_before_fit = signal.getsignal(signal.SIGTERM)  # Lightning registers its own after setup
        super().setup(trainer)

    def on_train_start(self) -> None:
        super().on_train_start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)  # Lightning's teardown restores the pre-fit handler

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._sigterm_flag = True
        if callable(self._handler_before_fit):
            self._handler_before_fit(signum, frame)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        if any_rank(getattr(self, "_sigterm_flag", False), self.root_device):
            if is_global_zero():
                _release_child_observer()
            raise SIGTERMException()
        return super().training_step(*args, **kwargs)
