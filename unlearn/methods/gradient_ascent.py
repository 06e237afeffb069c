"""``gradient_ascent``: maximise the cross-entropy of the forget set (Thudi et al. 2022; Jang et al. 2023 "knowledge
unlearning"): descend on ``-CE(f(x_f), y_f)`` for ``epochs``. No retain term, so it over-forgets when run too long."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from unlearn.methods.base import (
    OPTIMIZERS,
    UnlearningMethod,
    UnlearnTask,
    check_choice,
    check_positive,
    make_optimizer,
    train_epochs,
)


class GradientAscent(UnlearningMethod):
    """Gradient ascent on D_f."""

    def __init__(
        self, name: str = "gradient_ascent", epochs: int = 1, lr: float = 0.01, optimizer: str = "sgd"
    ) -> None:
        super().__init__(name)
        check_positive("unlearn_method.epochs", epochs, integer=True)
        check_positive("unlearn_method.lr", lr)
        check_choice("unlearn_method.optimizer", optimizer, OPTIMIZERS)
        self.epochs, self.lr, self.optimizer = int(epochs), float(lr), optimizer

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        opt = make_optimizer(self.optimizer, [p for p in model.parameters() if p.requires_grad], self.lr)
        train_epochs(
            model,
            task.loader(task.forget, shuffle=True),
            lambda m, b: -F.cross_entropy(task.logits(m, b[0]), b[1]),
            opt,
            self.epochs,
            task.device,
        )
        return model
