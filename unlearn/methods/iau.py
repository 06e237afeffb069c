"""Influence Approximation Unlearning (Liu, Wu, Lian, Chen, arXiv 2507.23257, 2025; code github Lolo1222/IAU).

Removing D_f is approximated, to first order, by incrementally *learning* virtual points whose gradients are the
negated forget gradients, corrected by a descent step on the remaining data:

    theta_u = theta* - eta * ( grad L_r(theta*) - grad L_f(theta*) ),

with L_r and L_f the mean cross-entropies over D_r and D_f. The reference code (``IAU_unlearn.py``) takes this step
with a *fresh Adam* (lr 1e-3, ``utility/parser.py``): one Adam step from zero state moves every parameter by
``lr * g / (|g| + eps)``, i.e. about ``lr * sign(g)``, whatever the gradient's scale. ``optimizer=adam, lr=0.001``
(the default) is that step; ``optimizer=sgd`` takes the paper formula's plain step ``eta * g``.

Why Adam is the default (issue 17, experiments/unlearn_native/README.md "IAU: the collapse diagnosed"): the plain
step's scale is the gradient's, which differs by orders of magnitude between models; on a batch-norm CNN trained on
digits the first conv's gradient norm is 13x its weight norm, so eta >= 0.01 (the old grid) wrecked every class,
while the sign-like step has one scale for every parameter (the usable range on that model: lr 2e-4 ... 1e-3).

Departures from the reference code (spec: code defects 2, 3): the two full-batch gradients are accumulated over
mini-batches (``batch_size``), each batch weighted by its share of the set, which gives the full-batch mean without
holding the whole set in memory; gradients are zeroed first (the reference relies on a freshly loaded model). The
gradients are taken with the model in eval mode: the reference's LeNet-5 has neither batch norm nor dropout, so its
train mode is the same thing; for a batch-norm model train mode would normalise with the statistics of one forget
batch and overwrite the running statistics. The gradient-restriction training loss of the paper is ``cl.run``'s
``+method.grad_restriction=ALPHA`` (``cl/methods/base.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.calibrate import AutoConfig, Calibratable, calibrate
from unlearn.context import UnlearnConfigError
from unlearn.methods.base import OPTIMIZERS, UnlearningMethod, UnlearnTask, check_choice, check_positive

# lr=auto grids (gentlest first) when unlearn_method.auto.grid is null: the step sizes that go from "nothing changes" to
# "every class is forgotten" on the digits models of experiments/unlearn_native (cnn_small: calibration tables there)
GRIDS = {
    "adam": [1e-5, 3e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7e-4, 1e-3, 2e-3],
    "sgd": [1e-5, 3e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7e-4, 1e-3, 3e-3, 1e-2],
}


def default_grid(auto: Any, optimizer: str) -> dict[str, Any]:
    """``auto`` as a dict with ``grid`` filled from :data:`GRIDS` when it is null or absent."""
    from omegaconf import DictConfig, OmegaConf

    raw = OmegaConf.to_container(auto, resolve=True) if isinstance(auto, DictConfig) else dict(auto or {})
    if raw.get("grid") is None and optimizer in GRIDS:
        raw["grid"] = list(GRIDS[optimizer])
    return raw


class IAU(UnlearningMethod, Calibratable):
    """One corrected influence step along ``-(grad L_r - grad L_f)``: a fresh Adam's first step (default, the reference
    code) or a plain step ``eta`` (sgd). ``lr="auto"``: the step size chosen on held-out classes of the same checkpoint
    (:mod:`unlearn.calibrate`; grid and criterion in ``auto``; grid null: :data:`GRIDS` of the optimizer)."""

    def __init__(
        self,
        name: str = "iau",
        lr: float | str = 1e-3,
        optimizer: str = "adam",
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
        self.auto = AutoConfig.from_config(default_grid(auto, optimizer), "unlearn_method.auto")

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

    def calibration_key(self, task: UnlearnTask) -> dict[str, Any] | None:
        return {"variant": "iau", "optimizer": self.optimizer, "batch_size": self.batch_size}

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
