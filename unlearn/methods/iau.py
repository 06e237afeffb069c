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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.calibrate import AutoConfig, Calibratable, calibrate
from unlearn.context import UnlearnConfigError
from unlearn.methods.base import OPTIMIZERS, UnlearningMethod, UnlearnTask, check_choice, check_positive


class IAU(UnlearningMethod, Calibratable):
    """One corrected influence step: ``theta - eta * (grad L_r - grad L_f)``. ``lr="auto"``: eta chosen on held-out
    classes of the same checkpoint (:mod:`unlearn.calibrate`; grid and criterion in ``auto``)."""

    def __init__(
        self,
        name: str = "iau",
        lr: float | str = 0.05,
        optimizer: str = "sgd",
        batch_size: int = 256,
        auto: Any = None,
    ) -> None:
        super().__init__(name)
        if lr != "auto":
            if isinstance(lr, str):
                raise UnlearnConfigError(f"unlearn_method.lr={lr!r}; allowed: a positive number or auto")
            check_positive("unlearn_method.lr", lr)
        check_choice("unlearn_method.optimizer", optimizer, OPTIMIZERS)
        check_positive("unlearn_method.batch_size", batch_size, integer=True)
        self.lr, self.optimizer, self.batch_size = lr if lr == "auto" else float(lr), optimizer, int(batch_size)
        self.auto = AutoConfig.from_config(auto, "unlearn_method.auto")

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

    def direction(self, model: nn.Module, task: UnlearnTask) -> dict[str, torch.Tensor]:
        """``grad L_r - grad L_f`` per trainable parameter (model in eval mode, gradients cleared afterwards)."""
        was = model.training
        model.eval()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.accumulate(model, task, [p for _, p in named])
        out = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}
        for _, p in named:
            p.grad = None
        model.train(was)
        return out

    def step(self, model: nn.Module, grads: dict[str, torch.Tensor], lr: float) -> None:
        """One step of size ``lr`` along ``-grads``: plain (sgd) or a fresh Adam's first step (adam)."""
        named = [(n, p) for n, p in model.named_parameters() if n in grads]
        if self.optimizer == "sgd":
            with torch.no_grad():
                for n, p in named:
                    p.sub_(lr * grads[n].to(p.device))
            return
        for n, p in named:
            p.grad = grads[n].to(p.device).clone()
        torch.optim.Adam([p for _, p in named], lr=lr).step()
        for _, p in named:
            p.grad = None

    def prepare(self, model: nn.Module, task: UnlearnTask) -> Any:
        return self.direction(model, task)

    def apply(self, model: nn.Module, state: Any, task: UnlearnTask, value: float, lam: float) -> None:
        self.step(model, state, value)

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        model.to(task.device)
        self.info = {}
        lr = self.lr
        if lr == "auto":
            lr, _, self.info["auto"] = calibrate(self, model, task, self.auto)
        grads = self.direction(model, task)
        self.step(model, grads, float(lr))
        grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))
        self.info.update(lr=float(lr), optimizer=self.optimizer, update_grad_norm=grad_norm)
        return model
