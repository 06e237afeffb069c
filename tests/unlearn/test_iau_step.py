"""IAU's update theta - eta * (grad L_r - grad L_f) against a hand-computed gradient of a linear softmax model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from unlearn.methods.iau import IAU


def _task(xr, yr, xf, yf, mask):
    def logits(model, x):
        out = model(x)
        return out.masked_fill(~mask, torch.finfo(out.dtype).min)

    return SimpleNamespace(
        retain=TensorDataset(xr, yr),
        forget=TensorDataset(xf, yf),
        device=torch.device("cpu"),
        logits=logits,
        loader=lambda ds, shuffle=False, batch_size=None: DataLoader(ds, batch_size=batch_size or 4),
        work_dir=Path("."),
    )


def _mean_ce_grad(W, b, X, Y, mask):
    """d/dW, d/db of mean_i CE(softmax over mask of W x_i + b, y_i): (p - onehot) x^T / n, by hand in numpy."""
    z = X @ W.T + b
    z[:, ~mask] = -np.inf
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(Y)), Y] -= 1.0
    return p.T @ X / len(Y), p.mean(0)


def test_one_sgd_step_equals_the_hand_computed_update():
    g = torch.Generator().manual_seed(0)
    xr, yr = torch.randn(11, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    xf, yf = torch.randn(5, 3, generator=g), torch.tensor([3, 3, 3, 3, 3])
    mask = torch.tensor([True, True, True, True, False])  # class 4 never seen
    model = nn.Linear(3, 5).double()
    W0, b0 = model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()
    m = mask.numpy()
    gWr, gbr = _mean_ce_grad(W0, b0, xr.double().numpy(), yr.numpy(), m)
    gWf, gbf = _mean_ce_grad(W0, b0, xf.double().numpy(), yf.numpy(), m)
    eta = 0.3
    # batch_size 4 splits 11 retain samples 4/4/3: accumulation must still give the exact full-set mean
    IAU(lr=eta, optimizer="sgd", batch_size=4).unlearn(model, _task(xr.double(), yr, xf.double(), yf, mask))
    np.testing.assert_allclose(model.weight.detach().numpy(), W0 - eta * (gWr - gWf), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.bias.detach().numpy(), b0 - eta * (gbr - gbf), rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_adam_option_is_a_single_sign_like_step():
    g = torch.Generator().manual_seed(1)
    xr, yr = torch.randn(8, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    xf, yf = torch.randn(4, 3, generator=g), torch.tensor([2, 2, 2, 2])
    model = nn.Linear(3, 3).double()
    W0 = model.weight.detach().numpy().copy()
    m = np.ones(3, dtype=bool)
    gWr, _ = _mean_ce_grad(W0, model.bias.detach().numpy(), xr.double().numpy(), yr.numpy(), m)
    gWf, _ = _mean_ce_grad(W0, model.bias.detach().numpy(), xf.double().numpy(), yf.numpy(), m)
    IAU(lr=1e-3, optimizer="adam").unlearn(model, _task(xr.double(), yr, xf.double(), yf, torch.tensor(m)))
    grad = gWr - gWf  # first Adam step from zero state: lr * g / (|g| + eps)
    np.testing.assert_allclose(model.weight.detach().numpy(), W0 - 1e-3 * grad / (np.abs(grad) + 1e-8), rtol=1e-6)
