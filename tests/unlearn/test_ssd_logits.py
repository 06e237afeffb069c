"""SSD's importance is the cross-entropy of the evaluation logits over every seen class (unlearn/methods/ssd.py,
"Which loss"), not of the unmasked output."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unlearn.methods.base import UnlearnTask
from unlearn.methods.ssd import SSD


def _task(mask: torch.Tensor) -> UnlearnTask:
    return UnlearnTask(None, None, None, None, None, mask, 4, torch.device("cpu"), 0, Path("."))  # type: ignore[arg-type]


def _batch_importance(model: nn.Module, batches, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in batches:
        logits = model(x).masked_fill(~mask, torch.finfo(torch.float32).min)
        grads = torch.autograd.grad(nn.functional.cross_entropy(logits, y), list(model.parameters()))
        for (n, _), g in zip(model.named_parameters(), grads):
            out[n] += g.pow(2) / len(batches)
    return out


def test_ssd_importance_uses_all_seen_class_logits():
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    x, y = torch.randn(8, 5), torch.tensor([0, 1, 2, 2, 1, 0, 2, 1])
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    seen = torch.tensor([True, True, True, False])  # class 3 not seen yet
    imp = SSD().importance(model, batches, _task(seen))
    expected = _batch_importance(model, batches, seen)
    for n in expected:
        torch.testing.assert_close(imp[n], expected[n], rtol=1e-4, atol=1e-10)
    assert float(imp["weight"][3].abs().sum()) == 0.0  # the unseen class's row gets no importance
    unmasked = _batch_importance(model, batches, torch.ones(4, dtype=torch.bool))
    assert not torch.allclose(unmasked["weight"][:3], imp["weight"][:3])  # the mask changes the seen rows too
