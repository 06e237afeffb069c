"""cl.run's gradient-restriction option (IAU): loss = CE + alpha * sum of per-tensor norms of the CE gradient."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl.methods.finetune import Finetune


class _Tiny(nn.Module):
    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return torch.tanh(self.lin(x))


def _method(alpha: float) -> Finetune:
    torch.manual_seed(0)
    return Finetune(_Tiny(), 5, functools.partial(torch.optim.SGD, lr=0.1), grad_restriction=alpha)


def test_training_loss_adds_alpha_times_the_gradient_norms():
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    plain, gr = _method(0.0), _method(0.5)
    for m in (plain, gr):
        m.seen_classes[:3] = True
    ce = plain.training_step((x, y), 0)
    params = list(plain.parameters())
    grads = torch.autograd.grad(F.cross_entropy(plain.apply_mask(plain(x), plain.seen_classes), y), params)
    expected = ce + 0.5 * sum(g.norm() for g in grads)
    loss = gr.training_step((x, y), 0)
    torch.testing.assert_close(loss, expected)
    loss.backward()  # double back-propagation: the penalty has a gradient of its own
    assert all(p.grad is not None for p in gr.parameters())


def test_negative_alpha_is_refused():
    with pytest.raises(ValueError, match="method.grad_restriction=-1.0"):
        _method(-1.0)
