"""The learning-rate schedule of github weiaicunzai/pytorch-cifar100 (``train.py``, ``utils.WarmUpLR``), which SSD's
reference code trains its models with (github if-loops/selective-synaptic-dampening ``src/pretrain_model.py``):

* warm-up over the first ``warmup_epochs`` epochs, per optimizer step: the k-th step (0-based) runs at
  ``lr * k / (warmup_epochs * steps_per_epoch)`` (``WarmUpLR`` starts at 0 and is stepped after every batch);
* afterwards, at epoch E (1-based), ``lr * gamma ** #{m in milestones: m <= E}`` (``MultiStepLR.step(E)`` called
  before the epoch; so the epoch numbered like a milestone already runs at the lower rate).

Stepped per optimizer step (``scheduler_interval: step``); ``steps_per_epoch`` is filled in by
``ContinualMethod.configure_optimizers`` from the trainer's estimate.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch


def warmup_multistep_factor(
    step: int, steps_per_epoch: int, milestones: Sequence[int], gamma: float, warmup_epochs: int
) -> float:
    """The multiplier of the base lr at optimizer step ``step`` (0-based)."""
    warm = warmup_epochs * steps_per_epoch
    if step < warm:
        return step / warm
    epoch = step // steps_per_epoch + 1  # 1-based, as the reference's loop
    return gamma ** bisect.bisect_right(sorted(milestones), epoch)


def warmup_multistep(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    milestones: Sequence[int] = (60, 120, 160),
    gamma: float = 0.2,
    warmup_epochs: int = 1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped per optimizer step giving the schedule of the module docstring."""
    if int(steps_per_epoch) < 1 or int(warmup_epochs) < 0 or not 0 < float(gamma) <= 1:
        raise ValueError(
            f"method.scheduler: steps_per_epoch={steps_per_epoch} must be >= 1, warmup_epochs={warmup_epochs} >= 0, "
            f"gamma={gamma} in (0, 1]"
        )
    ms = [int(m) for m in milestones]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_multistep_factor(s, int(steps_per_epoch), ms, float(gamma), int(warmup_epochs)),
    )
