"""Influence Approximation Unlearning (Liu, Wu, Lian, Chen, arXiv 2507.23257, 2025; code Lolo1222/IAU).

Removing D_f is approximated, to first order, by incrementally *learning* virtual points whose gradients are the
negated forget gradients, corrected by a descent step on the remaining data:

    theta_u = theta* - eta * ( grad L_r(theta*) - grad L_f(theta*) ),

with L_r and L_f the mean cross-entropies over D_r and D_f. Departures from the reference code (spec iau.md §6):
the two full-batch gradients are accumulated over mini-batches (``batch_size``), each batch weighted by its share of
the set, which gives exactly the full-batch mean without holding the whole set in memory; ``optimizer=sgd`` (default)
takes the paper's step ``eta``; ``optimizer=adam`` reproduces the reference code's single step of a fresh Adam
(lr 1e-3), which moves each parameter by about ``lr * sign(g)``. Gradients are zeroed first (the reference relies on a
freshly loaded model). The model is in eval mode (no dropout). The gradient-restriction training loss of the paper
is ``cl.run``'s ``+method.grad_restriction=ALPHA`` (``cl/methods/base.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.methods.base import OPTIMIZERS, UnlearningMethod, UnlearnTask, check_choice, check_positive


class IAU(UnlearningMethod):
    """One corrected influence step: ``theta - eta * (grad L_r - grad L_f)``."""

    def __init__(self, name: str = "iau", lr: float = 0.05, optimizer: str = "sgd", batch_size: int = 256) -> None:
        super().__init__(name)
        check_positive("unlearn_method.lr", lr)
        check_choice("unlearn_method.optimizer", optimizer, OPTIMIZERS)
        check_positive("unlearn_method.batch_size", batch_size, integer=True)
        self.lr, self.optimizer, self.batch_size = float(lr), optimizer, int(batch_size)

    def accumulate(self, model: nn.Module, task: UnlearnTask, params: list[nn.Parameter]) -> None:
        """Leave ``grad L_r - grad L_f`` (exact set means, accumulated over mini-batches) in ``p.grad``."""
        for p in params:
            p.grad = None
        for dataset, sign in ((task.retain, 1.0), (task.forget, -1.0)):
            n = len(dataset)
            for batch in task.loader(dataset, batch_size=self.batch_size):
                x, y = batch[0].to(task.device), batch[1].to(task.device)
                loss = F.cross_entropy(task.logits(model, x), y, reduction="sum") * (sign / n)
                loss.backward()

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        model.to(task.device)
        was = model.training
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        self.accumulate(model, task, params)
        if self.optimizer == "sgd":
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.sub_(self.lr * p.grad)
        else:
            torch.optim.Adam(params, lr=self.lr).step()
        grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)))
        for p in params:
            p.grad = None
        model.train(was)
        self.info = {"lr": self.lr, "optimizer": self.optimizer, "update_grad_norm": grad_norm}
        return model
