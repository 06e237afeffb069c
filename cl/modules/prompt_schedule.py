"""The learning-rate schedule of the CODA-Prompt reference code (GT-RIPL/CODA-Prompt ``utils/schedulers.py``
``CosineSchedule``), stepped once per epoch::

    lr_e = lr_0 * cos(99 * pi * e / (200 * (K - 1)))      e = 0..K-1, K = number of epochs

so the last epoch runs at about lr_0 * cos(0.495 pi) = 0.016 lr_0. With K = 1 the reference divides by zero; here
the rate stays lr_0. Use with ``scheduler_interval: epoch``.
"""

from __future__ import annotations

import math

import torch


def coda_cosine_factor(epoch: int, epochs: int) -> float:
    """The multiplier of lr_0 at ``epoch`` (0-based) for a run of ``epochs`` epochs."""
    if epochs <= 1:
        return 1.0
    return math.cos(99 * math.pi * epoch / (200 * (epochs - 1)))


def coda_cosine(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` implementing :func:`coda_cosine_factor` (``epochs``: the trainer's ``max_epochs``)."""
    if int(epochs) < 1:
        raise ValueError(f"method.scheduler.epochs={epochs}; allowed: a positive integer (trainer.max_epochs)")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: coda_cosine_factor(e, int(epochs)))
