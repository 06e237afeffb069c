"""Online Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017, arXiv 1612.00796; the online form of Schwarz
et al., "Progress & Compress", ICML 2018, arXiv 1805.06370, and Chaudhry et al., ECCV 2018, arXiv 1801.10112).

Penalty while training experience t > 0:  L = CE + (lambda / 2) * sum_i F_i (theta_i - theta*_i)^2
After experience t:  F <- gamma * F + F_t  and  theta* <- theta,
where F_t is the diagonal of the empirical Fisher of the model on experience t's training data (mean over samples of
the squared per-sample gradient of log p(y|x), the masked logits of the experience). It comes from
:func:`kernels.fisher_diagonal` (``method.fisher_mode``: ``per_sample`` is exact; ``batch`` reproduces Avalanche's
squared batch-mean gradient).

This is online EWC, not the original EWC for any ``gamma``: there is one anchor theta* (the weights after the latest
experience) and one decayed sum of Fishers. The original EWC keeps one quadratic penalty per past task, each with its
own Fisher F_s and anchor theta*_s, sum_s F_s (theta - theta*_s)^2; ``gamma=1`` only stops the decay of the Fishers
and still pulls towards the latest weights alone. ``gamma`` < 1 down-weights older experiences (Schwarz et al.).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from cl.data.stream import Experience
from cl.methods.base import ContinualMethod


def _buffer_name(kind: str, param_name: str) -> str:
    return f"{kind}__{param_name.replace('.', '__')}"


class EWC(ContinualMethod):
    """Online EWC with an exact (per-sample) Fisher diagonal by default."""

    def __init__(
        self,
        *args: Any,
        ewc_lambda: float = 100.0,
        gamma: float = 1.0,
        fisher_mode: str = "per_sample",
        fisher_max_batches: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if fisher_mode not in ("per_sample", "batch"):
            raise ValueError(f"method.fisher_mode={fisher_mode!r}; allowed: ['per_sample', 'batch']")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"method.gamma={gamma}; allowed: [0, 1]")
        self.ewc_lambda, self.gamma = ewc_lambda, gamma
        self.fisher_mode, self.fisher_max_batches = fisher_mode, fisher_max_batches
        self._names = [n for n, p in self.named_parameters() if p.requires_grad]
        for name, p in self.named_parameters():
            if p.requires_grad:
                self.register_buffer(_buffer_name("fisher", name), torch.zeros_like(p))
                self.register_buffer(_buffer_name("anchor", name), torch.zeros_like(p))
        self.register_buffer("has_penalty", torch.tensor(False))

    def penalty(self) -> torch.Tensor:
        """(1/2) sum_i F_i (theta_i - theta*_i)^2 over all trainable parameters (without lambda)."""
        total = torch.zeros((), device=self.head.weight.device)
        params = dict(self.named_parameters())
        for name in self._names:
            f = getattr(self, _buffer_name("fisher", name))
            a = getattr(self, _buffer_name("anchor", name))
            total = total + (f * (params[name] - a).pow(2)).sum()
        return 0.5 * total

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Any) -> torch.Tensor:
        loss = super().compute_loss(x, y, batch)
        if bool(self.has_penalty):
            loss = loss + self.ewc_lambda * self.penalty()
        return loss

    def on_experience_end(self, experience: Experience, loader_factory: Callable[[Dataset], Any]) -> None:
        from kernels import fisher_diagonal

        mask = self.train_logit_mask().clone()
        result = fisher_diagonal(
            self,
            loader_factory(experience.train),
            mode=self.fisher_mode,
            forward_fn=lambda x: self.apply_mask(self(x), mask),
            max_batches=self.fisher_max_batches,
        )
        params = dict(self.named_parameters())
        for name in self._names:
            f = getattr(self, _buffer_name("fisher", name))
            f.mul_(self.gamma).add_(result.diag[name].to(f))
            getattr(self, _buffer_name("anchor", name)).copy_(params[name].detach())
        self.has_penalty.fill_(True)
