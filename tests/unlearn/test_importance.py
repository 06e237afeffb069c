"""Importances through kernels.fisher_diagonal: SSD's batch mode, LFSSD's label-free reduction, and the cache."""

from __future__ import annotations

import torch
from torch import nn

from unlearn.importance import cached, fisher_importance, label_free_importance


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(10, 4)
    y = torch.randint(0, 3, (10,))
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    return model, x, y, batches


def _grads(model, loss):
    return dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters()))))


def test_batch_mode_is_the_mean_of_squared_batch_gradients():
    model, _, _, batches = _setup()
    imp = fisher_importance(model, batches, "batch", model)
    expected = {n: 0 for n, _ in model.named_parameters()}
    for xb, yb in batches:
        for n, g in _grads(model, nn.functional.cross_entropy(model(xb), yb)).items():
            expected[n] = expected[n] + g.pow(2) / len(batches)
    for n in expected:
        torch.testing.assert_close(imp[n], expected[n], rtol=1e-4, atol=1e-10)


def test_label_free_importance_equals_direct_gradients_of_the_logit_norm():
    model, x, y, batches = _setup()
    mask = torch.tensor([True, False, True])  # the middle class unseen: left out of ||f(x)||^2

    def s(xb):
        return model(xb)[:, mask].pow(2).sum(1)

    imp = label_free_importance(model, batches, "batch", model, mask)
    expected = {n: 0 for n, _ in model.named_parameters()}
    for xb, _ in batches:  # reference LFSSD: mean over batches of |d mean_b ||f(x)||^2 / d theta|
        for n, g in _grads(model, s(xb).mean()).items():
            expected[n] = expected[n] + g.abs() / len(batches)
    for n in expected:
        torch.testing.assert_close(imp[n], expected[n], rtol=1e-4, atol=1e-8)

    per = label_free_importance(model, batches, "per_sample", model, mask)
    sq = {n: 0 for n, _ in model.named_parameters()}
    for i in range(len(x)):
        for n, g in _grads(model, s(x[i : i + 1]).sum()).items():
            sq[n] = sq[n] + g.pow(2) / len(x)
    for n in sq:
        torch.testing.assert_close(per[n], sq[n].sqrt(), rtol=1e-3, atol=1e-7)
    assert y is not None  # labels exist but are never used


def test_cache_computes_once_per_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.arange(3.0)}

    path = tmp_path / "c" / "imp.pt"
    a, hit_a = cached(path, {"mode": "batch"}, compute)
    b, hit_b = cached(path, {"mode": "batch"}, compute)
    assert (hit_a, hit_b) == (False, True) and len(calls) == 1
    torch.testing.assert_close(b["w"], a["w"])
    _, hit_c = cached(path, {"mode": "per_sample"}, compute)  # another key stored at the same path: recomputed
    assert not hit_c and len(calls) == 2
