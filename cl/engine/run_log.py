"""``run.log``: what the console shows during a run (prints, warnings, log records), without progress bars.

:func:`console_to_run_log` copies every line written to ``sys.stdout`` / ``sys.stderr`` and every log record into
``<run dir>/run.log`` while it is active. Lines holding a carriage return (progress bars redraw with ``\\r``) are left
out and terminal colour codes are stripped. A fresh run starts the file anew; a resumed run appends to it. The other
ranks of a DDP run (which write no record) copy their console into ``<run dir>/train_ddp_process_<rank>.log``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _LineSink:
    """Line-buffered writer into the log file that drops progress-bar lines."""

    def __init__(self, file: IO[str]) -> None:
        self.file, self.buf = file, ""

    def write(self, text: str) -> int:
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            if "\r" not in line:
                self.file.write(_ANSI.sub("", line) + "\n")
        self.file.flush()
        return len(text)

    def flush(self) -> None:
        self.file.flush()


class _Tee:
    """A text stream that writes to the console stream and to a :class:`_LineSink`."""

    def __init__(self, stream: Any, sink: _LineSink) -> None:
        self._stream, self._sink = stream, sink

    def write(self, text: str) -> int:
        self._sink.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        self._sink.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... of the console stream
        return getattr(self._stream, name)


@contextmanager
def console_to_run_log(run_dir: Path, append: bool, name: str = "run.log") -> Iterator[Path]:
    """Copy the console into ``run_dir/name`` while active (another DDP rank: its own ``<job name>.log``)."""
    path = Path(run_dir) / name
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        sink = _LineSink(f)
        handler = logging.StreamHandler(sink)  # type: ignore[arg-type]
        handler.setFormatter(logging.Formatter("%(message)s"))
        root = logging.getLogger()
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, sink), _Tee(old_err, sink)  # type: ignore[assignment]
        root.addHandler(handler)
        try:
            yield path
        finally:
            root.removeHandler(handler)
            sys.stdout, sys.stderr = old_out, old_err
            if sink.buf and "\r" not in sink.buf:
                f.write(_ANSI.sub("", sink.buf) + "\n")
