"""The shared shape of the training-based unlearning baselines (``finetune``, ``gradient_ascent``, ``random_label``).

Each trains every trainable parameter of the model for ``epochs`` passes over one dataset built from the task, with one
loss on the masked logits (:meth:`UnlearnTask.logits`), using ``optimizer`` (``sgd`` with momentum 0.9, or ``adam``) at
learning rate ``lr``, in batches of the run's ``data.batch_size``; the options are checked when the method is built.
Training is Lightning's ``Trainer`` on the run's devices (:meth:`UnlearnTask.train`, unlearn/training.py: epoch e
visits the seeded permutation ``seed + e``; under DDP the same samples per step as one process). A baseline only says
which data (:meth:`TrainingBaseline.data`) and, if not cross-entropy, which loss (:meth:`TrainingBaseline.loss`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from unlearn.methods.base import (
    OPTIMIZERS,
    UnlearningMethod,
    UnlearnTask,
    check_choice,
    check_positive,
    make_optimizer,
)


class TrainingBaseline(UnlearningMethod):
    """``epochs`` of ``loss`` on ``data(task)`` with ``optimizer`` at ``lr`` (see the module docstring)."""

    def __init__(self, name: str, epochs: int, lr: float, optimizer: str) -> None:
        super().__init__(name)
        check_positive("unlearn_method.epochs", epochs, integer=True)
        check_positive("unlearn_method.lr", lr)
        check_choice("unlearn_method.optimizer", optimizer, OPTIMIZERS)
        self.epochs, self.lr, self.optimizer = int(epochs), float(lr), optimizer

    def data(self, task: UnlearnTask) -> Dataset:
        """The dataset to train on (batches of ``(x, y, ...)``)."""
        raise NotImplementedError

    def loss(self, task: UnlearnTask, model: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
        """Cross-entropy of the masked logits; override for another objective."""
        return F.cross_entropy(task.logits(model, batch[0]), batch[1])

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        def optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            return make_optimizer(self.optimizer, params, self.lr)

        task.train(model, self.data(task), lambda m, b: self.loss(task, m, b), optimizer, self.epochs)
        return model
