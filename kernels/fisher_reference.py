"""Reference Fisher-diagonal computations with torch.func (any module), used to check and back up the fast path.

* ``per_sample_sqsum``: ``sum_i (d/dtheta log p(y_i | x_i))^2`` from per-sample gradients ``vmap(grad(l_i))`` over
  chunks of samples, where ``l_i = CE(f(x_i), y_i)`` (the sign of the log-likelihood does not matter once squared).
* ``batch_sqgrad``: ``(d/dtheta mean_{i in b} CE_i)^2`` for one batch -- the quantity the SSD reference code and
  Avalanche's EWC accumulate (squared gradient of the batch-mean loss).

Only the parameters named in ``names`` are differentiated; all others enter as constants. The model is called through
``forward_fn`` (default ``model(x)``) with its parameters swapped by ``torch.func.functional_call``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.fisher_rules import chunk_size


class _Forward(nn.Module):
    """Lets functional_call swap the parameters of ``model`` while ``forward_fn`` (which calls ``model``) runs."""

    def __init__(self, model: nn.Module, forward_fn: Callable[[Tensor], Tensor] | None) -> None:
        super().__init__()
        self.model = model
        self.fn = forward_fn

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) if self.fn is None else self.fn(x)


def per_sample_sqsum(
    model: nn.Module,
    forward_fn: Callable[[Tensor], Tensor] | None,
    x: Tensor,
    y: Tensor,
    names: Sequence[str],
    chunk: int | None = None,
) -> dict[str, Tensor]:
    """Sum over samples of squared per-sample gradients of the cross-entropy, for the parameters ``names``."""
    from torch.func import functional_call, grad, vmap

    wrapper = _Forward(model, forward_fn)
    params = dict(model.named_parameters())
    diff = {f"model.{n}": params[n].detach() for n in names}

    def loss_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(wrapper, p, (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0), reduction="sum")

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    out = {n: torch.zeros_like(params[n], dtype=_acc_dtype(params[n])) for n in names}
    total = sum(params[n].numel() for n in names)
    c = chunk_size(x.shape[0], total, chunk)
    for s in range(0, x.shape[0], c):
        # torch.func.grad differentiates ``diff`` only; the parameters left out of ``names`` still require grad and
        # would give the result an outer autograd graph (through attention's backward, which has no derivative for
        # fused SDPA): no_grad keeps the outer graph off, the inner transform ignores it (torch.func.grad's docs)
        with torch.no_grad():
            grads = per_sample(diff, x[s : s + c], y[s : s + c])
        for n in names:
            out[n].add_(grads[f"model.{n}"].to(out[n].dtype).square().sum(0))  # outputs may alias
    return out


def batch_sqgrad(
    model: nn.Module,
    forward_fn: Callable[[Tensor], Tensor] | None,
    x: Tensor,
    y: Tensor,
    names: Sequence[str],
) -> dict[str, Tensor]:
    """Squared gradient of the batch-mean cross-entropy (the SSD / Avalanche importance of one batch)."""
    params = dict(model.named_parameters())
    logits = model(x) if forward_fn is None else forward_fn(x)
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    out = {}
    for n, g in zip(names, grads):
        out[n] = torch.zeros_like(params[n], dtype=_acc_dtype(params[n])) if g is None else g.to(_acc_dtype(g)) ** 2
    return out


def sample_labels(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """Labels drawn from the model's predictive distribution softmax(logits) (the true, not empirical, Fisher)."""
    probs = torch.softmax(logits.detach().float(), dim=1)
    dev = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(dev), 1, generator=generator).squeeze(1).to(logits.device)


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)
