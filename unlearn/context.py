"""Rebuild what a checkpoint was trained with: its config (plus command-line overrides), stream and model.

The training config is the checkpoint's own resolved ``config``. Keys of the training config given on the
``unlearn.run`` command line (``trainer=gpu``, ``data.eval_batch_size=512``, ...) replace the saved values, so that
evaluation batch size or device can change while the model, the stream and the class order stay those of the run.
A moved folder (``paths.data_dir=NEW``) also reaches the saved values resolved from it (``data.source.data_dir``).
The checkpoint file is only read, never written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# top-level keys of conf/cl.yaml that an unlearn.run command line may override in the saved training config
TRAIN_KEYS = ("data", "scenario", "backbone", "method", "trainer", "logger", "paths", "callbacks")


class UnlearnConfigError(ValueError):
    """Bad unlearning input (checkpoint, forget set, method options), found before any work."""


def source_run_dir(checkpoint: str | Path) -> Path:
    """The ``cl.run`` run directory of a checkpoint path or run directory."""
    p = Path(checkpoint)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_config(saved: dict[str, Any], composed: DictConfig | None, overrides: list[str]) -> DictConfig:
    """The saved training config with the command-line ``overrides`` of training keys applied from ``composed``."""
    from cl.engine.resume_policy import rebase_paths

    moved: dict[str, str] = {}
    for ov in overrides:  # a moved data or weights folder reaches the saved (resolved) values derived from it
        key = ov.split("=", 1)[0].lstrip("+~")
        if key.startswith("paths.") and key != "paths.output_dir" and composed is not None:
            old = OmegaConf.select(OmegaConf.create(saved), key, default=None)
            new = OmegaConf.select(composed, key, default=None)
            if isinstance(old, str) and isinstance(new, str):
                moved[old] = new
    cfg = OmegaConf.create(rebase_paths(saved, moved))
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] not in TRAIN_KEYS or composed is None:
            continue
        if ov.startswith("~"):
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is not None and leaf in node:
                del node[leaf]
            continue
        value = OmegaConf.select(composed, key, throw_on_missing=False)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


@dataclass
class Context:
    """A loaded checkpoint: paths, payload, training config, rebuilt stream and method (weights loaded)."""

    checkpoint: Path
    run_dir: Path
    checkpoint_hash: str
    payload: dict[str, Any]
    cfg: DictConfig
    stream: Any
    method: Any
    experience: int

    @property
    def initial_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "initial.ckpt"


def load_context(
    checkpoint: str | None, composed: DictConfig | None = None, overrides: list[str] | None = None
) -> Context:
    """Load and rebuild; raises :class:`UnlearnConfigError` with a clear message on any bad input."""
    from cl.engine.checkpoint import CheckpointError, load_checkpoint, load_method_state, resolve_checkpoint
    from cl.experiment import ConfigurationError, build

    if not checkpoint:
        raise UnlearnConfigError("checkpoint is not set; pass checkpoint=RUN_DIR or checkpoint=.../task_{t}.ckpt")
    try:
        path = resolve_checkpoint(checkpoint)
        payload = load_checkpoint(path)
    except CheckpointError as err:
        raise UnlearnConfigError(f"checkpoint={checkpoint!r}: {err}") from err
    t = int(payload["experience"])
    if t < 0:
        raise UnlearnConfigError(
            f"checkpoint={checkpoint!r} holds the weights before any training (experience {t}); nothing to unlearn"
        )
    cfg = train_config(payload["config"], composed, overrides or [])
    try:
        stream, method = build(cfg)
        load_method_state(method, payload["state_dict"], f"{str(path)!r}")
    except (ConfigurationError, CheckpointError) as err:
        raise UnlearnConfigError(f"checkpoint={checkpoint!r}: {err}") from err
    if list(payload["class_order"]) != list(stream.class_order):
        raise UnlearnConfigError(f"checkpoint={checkpoint!r}: the rebuilt stream's class order differs from the run's")
    return Context(path, source_run_dir(path), file_sha256(path), payload, cfg, stream, method, t)


def load_initial_weights(ctx: Context) -> Any:
    """A fresh method of the same config holding the run's weights before any training (``initial.ckpt``)."""
    from cl.engine.checkpoint import load_checkpoint, load_method_state
    from cl.experiment import build

    _, method = build(ctx.cfg)
    load_method_state(method, load_checkpoint(ctx.initial_checkpoint)["state_dict"], "initial.ckpt")
    return method
