"""Atomic file writes: write to a temporary file in the target folder, then ``os.replace`` it into place.

A reader never sees a half-written file, and an interrupted write leaves the previous version intact. The file gets
the mode a plain ``open(path, "w")`` would give (0666 minus the umask; ``mkstemp`` alone makes it 0600, unreadable to
the group a result is shared with). A write that fails for lack of space says so and names the file.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on device while writing {target}") from err
        raise
    except RuntimeError as err:  # torch.save's C++ writer reports a full disk as "unexpected pos" / "file write failed"
        if _out_of_space(err, target.parent):
            raise OSError(errno.ENOSPC, f"no space left on device while writing {target} ({err})") from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def _out_of_space(err: BaseException, folder: Path) -> bool:
    text = str(err)
    if "No space left" in text:
        return True
    if "unexpected pos" in text or "file write failed" in text:
        try:
            return os.statvfs(folder).f_bavail == 0 or "No space left" in text
        except OSError:
            return False
    return False


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically (for torch.save, savefig, ...)."""
    with atomic_path(path) as tmp:
        writer(tmp)
