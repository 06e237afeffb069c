"""Value checks of the composed config that need no data or model, run before anything is built or written.

Each failure raises :class:`cl.errors.ConfigurationError` naming the key, the value given and what is allowed:
``seed`` (an integer), ``trainer.max_epochs`` (a positive integer: 0 or -1 would train nothing),
``data.batch_size`` / ``data.eval_batch_size`` (positive integers), ``data.num_workers`` (>= 0), every learning rate
of the method (keys named ``lr`` or ``*_lr``: a positive number) and ``trainer.accelerator`` gpu/cuda on a machine
without a visible CUDA device.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from cl.errors import ConfigurationError


def _int(cfg: DictConfig, key: str, minimum: int, what: str) -> None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not ok:
        raise ConfigurationError(f"{key}={value!r}; allowed: {what}")


def _learning_rates(node: Any, prefix: str) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every key named ``lr`` or ``*_lr`` in a plain (resolved) container."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out += _learning_rates(v, f"{prefix}.{k}")
        if str(k) == "lr" or str(k).endswith("_lr"):
            out.append((f"{prefix}.{k}", v))
    return out


def check_values(cfg: DictConfig) -> None:
    """Raise :class:`ConfigurationError` on the first bad value (see the module docstring)."""
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigurationError(f"seed={seed!r}; allowed: an integer")
    _int(cfg, "trainer.max_epochs", 1, "a positive integer (epochs per experience)")
    _int(cfg, "data.batch_size", 1, "a positive integer (the global training batch)")
    _int(cfg, "data.eval_batch_size", 1, "a positive integer")
    _int(cfg, "data.num_workers", 0, "an integer >= 0")
    if cfg.get("method") is not None:
        for key, value in _learning_rates(OmegaConf.to_container(cfg.method, resolve=True), "method"):
            if value is None:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigurationError(f"{key}={value!r}; allowed: a positive number (a learning rate)")
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"trainer.accelerator={accelerator!r} but this machine has no usable CUDA device "
                "(torch.cuda.is_available() is False); use trainer=cpu (or trainer=ddp_cpu for several processes)"
            )
