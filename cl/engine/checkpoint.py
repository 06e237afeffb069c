"""Per-experience checkpoints: state dicts only, written atomically, loaded with ``weights_only=True``.

A checkpoint is a dict with ``format == CHECKPOINT_FORMAT`` holding the method's ``state_dict`` (model and every
method state: buffers, prompts, Fisher diagonals, masks), the accuracy matrices so far, the stream position, the
run-long callbacks' states and the resolved config: what resume needs. No optimizer state (each experience's ``fit``
builds a fresh optimizer) and no RNG state (experience t starts from ``seed_everything(seed + t)``). Anything else is
refused with a clear message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from cl.utils.atomic import write_with

CHECKPOINT_FORMAT = "cl-framework/experience-checkpoint"
CHECKPOINT_VERSION = 1
_TASK_CKPT = re.compile(r"^task_(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A file that is not one of this framework's checkpoints, or one that does not fit the model."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format marker) atomically to ``path``."""
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    write_with(path, lambda tmp: torch.save(data, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one of our checkpoints on the CPU with ``weights_only=True``; refuse anything else clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint written by cl.run (it could not be loaded with weights_only=True: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint written by cl.run (no '{CHECKPOINT_FORMAT}' format marker); "
            "pass a checkpoints/task_{t}.ckpt file or a run directory"
        )
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {data.get('version')}; this code reads 1")
    return data


def task_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """``{t: run_dir/checkpoints/task_t.ckpt}`` for every completed experience in a run directory."""
    folder = Path(run_dir) / "checkpoints"
    found = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = _TASK_CKPT.match(p.name)
            if m:
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The run directory's last completed experience checkpoint, else its ``initial.ckpt`` (a run stopped during
    experience 0), else None."""
    ckpts = task_checkpoints(run_dir)
    if ckpts:
        return ckpts[max(ckpts)]
    initial = Path(run_dir) / "checkpoints" / "initial.ckpt"
    return initial if initial.is_file() else None


def resolve_checkpoint(path_or_run: str | Path) -> Path:
    """A ``task_{t}.ckpt`` path as is, or a run directory's :func:`last_checkpoint`."""
    p = Path(path_or_run)
    if p.is_dir():
        last = last_checkpoint(p)
        if last is None:
            raise CheckpointError(
                f"{str(p)!r} is not a run directory of cl.run with a checkpoint "
                "(expected checkpoints/task_{t}.ckpt or checkpoints/initial.ckpt inside)"
            )
        return last
    return p


def checkpoint_run_dir(path: str | Path) -> Path:
    """The run directory of a checkpoint file (``RUN/checkpoints/task_t.ckpt`` -> ``RUN``) or of a run directory."""
    p = Path(path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def load_method_state(method: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the mismatch instead of a wall of keys."""
    own = method.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shape = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shape:
            k = shape[0]
            parts.append(
                f"{len(shape)} shape mismatches (e.g. {k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise CheckpointError(
            f"checkpoint {source} was written for another model than {type(method).__name__} with this "
            f"backbone/method config: " + "; ".join(parts)
        )
    method.load_state_dict(state_dict, strict=True)
