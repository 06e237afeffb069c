"""``gradient_ascent``: maximise the cross-entropy of the forget set (Thudi et al. 2022; Jang et al. 2023 "knowledge
unlearning"): descend on ``-CE(f(x_f), y_f)`` for ``epochs``. No retain term, so it over-forgets when run too long."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from unlearn.methods._train_loop import TrainingBaseline
from unlearn.methods.base import UnlearnTask


class GradientAscent(TrainingBaseline):
    """Gradient ascent on D_f."""

    def __init__(
        self, name: str = "gradient_ascent", epochs: int = 1, lr: float = 0.01, optimizer: str = "sgd"
    ) -> None:
        super().__init__(name, epochs, lr, optimizer)

    def data(self, task: UnlearnTask) -> Dataset:
        return task.forget

    def loss(self, task: UnlearnTask, model: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
        return -super().loss(task, model, batch)
