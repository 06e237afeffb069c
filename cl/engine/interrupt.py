"""Ctrl-C stops a run as SIGTERM does: the current experience is abandoned, the completed ones are checkpointed.

:func:`ctrl_c_as_sigterm` turns the first SIGINT into a SIGTERM to this process (Lightning ends ``fit`` at the next
step, the engine raises :class:`cl.engine.loop.Preempted`), so the run ends with "resume to continue" instead of a
raw ``KeyboardInterrupt`` traceback; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class CtrlC:
    pressed = False


@contextmanager
def ctrl_c_as_sigterm() -> Iterator[CtrlC]:
    state = CtrlC()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if state.pressed:
            raise KeyboardInterrupt
        state.pressed = True
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # not training yet: nothing to checkpoint
            print("interrupted (Ctrl-C) before training started", file=sys.stderr)
            raise SystemExit(130)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
