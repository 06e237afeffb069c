"""Per-epoch learning-rate schedule of DyTox / GCAB-CFDC (timm ``CosineLRScheduler`` as built by timm's
``create_scheduler`` with ``--sched cosine --warmup-epochs 5 --warmup-lr 1e-6 --min-lr 1e-5``; reference code github
OcraM17/GCAB-CFDC ``main.py``): a linear warm-up from ``warmup_lr`` to the base lr over ``warmup_epochs``, then
``min_lr + (base - min_lr) (1 + cos(pi e / epochs)) / 2`` at epoch ``e`` (timm counts the cosine from epoch 0)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    warmup_epochs: int = 5,
    warmup_lr: float = 1e-6,
    min_lr: float = 1e-5,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` (stepped once per epoch) giving the schedule of the module docstring."""
    if epochs < 1 or warmup_epochs < 0:
        raise ValueError(f"warmup_cosine: epochs={epochs} must be >= 1 and warmup_epochs={warmup_epochs} >= 0")
    bases = [g["lr"] for g in optimizer.param_groups]

    def factor(base: float):
        def f(e: int) -> float:
            if e < warmup_epochs:
                return (warmup_lr + e * (base - warmup_lr) / warmup_epochs) / base
            return (min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * e / epochs))) / base

        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(b) for b in bases])
