"""What every unlearning method gets (:class:`UnlearnTask`) and the small helpers the baselines share.

A method's :meth:`UnlearningMethod.unlearn` receives the trained continual method (a ``ContinualMethod``: backbone +
head, loaded from the checkpoint) and returns the unlearned one (the same object changed in place, or a new one, e.g.
``retrain``). The logits it should use are :meth:`UnlearnTask.logits`: the model's logits masked to the classes the
checkpoint has seen, as in task-agnostic evaluation. :meth:`UnlearningMethod.check` runs before any work, so that bad
options stop with a clear message. A method that trains calls :meth:`UnlearnTask.train` (Lightning's ``Trainer`` on
the run's devices, the same samples per step for any number of DDP processes: unlearn/training.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unlearn.context import Context, UnlearnConfigError
from unlearn.forget import Split

OPTIMIZERS = ("sgd", "adam")


@dataclass
class UnlearnTask:
    """The checkpoint context, the split, the pools of samples and the loader settings."""

    ctx: Context
    split: Split
    forget: Dataset
    retain: Dataset
    full: Dataset
    mask: torch.Tensor
    batch_size: int
    device: torch.device
    seed: int
    work_dir: Path
    forget_type: str = "class"
    info: dict[str, Any] = field(default_factory=dict)

    def loader(
        self, dataset: Dataset, shuffle: bool = False, batch_size: int | None = None, drop_last: bool = False
    ) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        size = batch_size or self.batch_size
        return DataLoader(dataset, batch_size=size, shuffle=shuffle, generator=gen, drop_last=drop_last)

    def train(
        self,
        model: nn.Module,
        dataset: Dataset,
        loss: Callable[[nn.Module, tuple[Any, ...]], torch.Tensor],
        optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        epochs: int,
        batch_size: int | None = None,
    ) -> None:
        """``epochs`` passes of ``loss(model, batch)`` over ``dataset`` (batches of ``batch_size``, default the task's)
        with Lightning's ``Trainer`` on the run's devices (unlearn/training.py), ``optimizer(trainable parameters)``."""
        from unlearn.training import fit_epochs

        fit_epochs(
            model,
            dataset,
            loss,
            optimizer,
            epochs=int(epochs),
            batch_size=int(batch_size or self.batch_size),
            seed=self.seed,
            trainer_cfg=self.ctx.cfg.trainer,
            device=self.device,
        )

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits masked to the seen classes (the lowest float elsewhere, so softmax gives them 0)."""
        out = model(x)
        return out.masked_fill(~self.mask.to(out.device), torch.finfo(out.dtype).min)


class UnlearningMethod:
    """Base class: a name, an early ``check`` and ``unlearn``."""

    needs_initial_weights = False

    def __init__(self, name: str = "") -> None:
        self.name = name or type(self).__name__.lower()
        self.info: dict[str, Any] = {}

    def check(self, task: UnlearnTask) -> None:
        """Validate options against the task before any work (raise :class:`UnlearnConfigError`)."""
        if self.needs_initial_weights and not task.ctx.initial_checkpoint.is_file():
            raise UnlearnConfigError(
                f"unlearn_method={self.name} needs the run's initial weights, but "
                f"{str(task.ctx.initial_checkpoint)!r} does not exist"
            )

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        raise NotImplementedError


def check_choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise UnlearnConfigError(f"{key}={value!r}; allowed: {list(allowed)}")


def check_positive(key: str, value: float, integer: bool = False) -> None:
    if not (value > 0) or (integer and int(value) != value):
        raise UnlearnConfigError(f"{key}={value!r}; allowed: a positive {'integer' if integer else 'number'}")


def make_optimizer(kind: str, params: Any, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    return torch.optim.Adam(params, lr=lr)
