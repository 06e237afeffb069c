"""``finetune``: fine-tune on the retain set only and rely on catastrophic forgetting of D_f (the SSD reference's
"finetune" baseline: 5 epochs, SGD lr 0.02)."""

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


class Finetune(UnlearningMethod):
    """Cross-entropy training on D_r for ``epochs``."""

    def __init__(self, name: str = "finetune", epochs: int = 5, lr: float = 0.02, optimizer: str = "sgd") -> None:
        super().__init__(name)
        check_positive("unlearn_method.epochs", epochs, integer=True)
        check_positive("unlearn_method.lr", lr)
        check_choice("unlearn_method.optimizer", optimizer, OPTIMIZERS)
        self.epochs, self.lr, self.optimizer = int(epochs), float(lr), optimizer

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        opt = make_optimizer(self.optimizer, [p for p in model.parameters() if p.requires_grad], self.lr)
        train_epochs(
            model,
            task.loader(task.retain, shuffle=True),
            lambda m, b: F.cross_entropy(task.logits(m, b[0]), b[1]),
            opt,
            self.epochs,
            task.device,
        )
        return model
