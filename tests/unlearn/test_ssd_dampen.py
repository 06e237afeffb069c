"""SSD's selection and dampening (unlearn.methods.ssd.dampen) on a hand-built model with hand-set importances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unlearn.context import UnlearnConfigError
from unlearn.methods.ssd import REFERENCE_ALPHA, SSD, dampen


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))


def test_exactly_the_selected_parameters_are_dampened_by_the_formula():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    imp_full = {n: torch.full_like(p, 0.1) for n, p in model.named_parameters()}
    imp_forget = {n: torch.full_like(p, 0.05) for n, p in model.named_parameters()}  # below alpha * 0.1: untouched
    # hand-picked entries: selected iff f > alpha * d with alpha = 2, lambda = 1.5
    imp_forget["0.weight"][0, 1] = 0.8  # selected: beta = 1.5 * 0.1 / 0.8 = 0.1875
    imp_forget["0.bias"][1] = 0.21  # selected: beta = 0.15 / 0.21
    imp_forget["1.weight"][1, 0] = 0.2  # equal to alpha * d: not selected (strict >)
    imp_full["1.bias"][0] = 0.01
    imp_forget["1.bias"][0] = 0.03  # selected and lambda * d / f = 0.5
    imp_full["1.weight"][0, 0] = 0.0
    imp_forget["1.weight"][0, 0] = 0.0  # 0 > 0 is false: not selected, no division by zero

    n = dampen(model, imp_forget, imp_full, alpha=2.0, lam=1.5)

    expected = {k: v.clone() for k, v in before.items()}
    expected["0.weight"][0, 1] *= 1.5 * 0.1 / 0.8
    expected["0.bias"][1] *= 1.5 * 0.1 / 0.21
    expected["1.bias"][0] *= 1.5 * 0.01 / 0.03
    after = dict(model.named_parameters())
    assert n == 3
    for name, value in expected.items():
        torch.testing.assert_close(after[name].detach(), value, rtol=1e-6, atol=0)
    changed = sum(int((after[k].detach() != before[k]).sum()) for k in before)
    assert changed == 3


def test_dampening_factor_is_capped_at_one():
    model = _model()
    w = model[0].weight.detach().clone()
    imp_full = {n: torch.full_like(p, 1.0) for n, p in model.named_parameters()}
    imp_forget = {n: torch.full_like(p, 1.5) for n, p in model.named_parameters()}  # selected for alpha = 1
    dampen(model, imp_forget, imp_full, alpha=1.0, lam=10.0)  # lambda * d / f = 6.7 -> capped to 1
    torch.testing.assert_close(model[0].weight.detach(), w)


def test_reference_alpha_table_and_bad_options():
    assert REFERENCE_ALPHA[("vit", "class")] == 5.0 and REFERENCE_ALPHA[("vit", "subclass")] == 25.0
    assert SSD(**{"lambda": 0.1}).lam == 0.1
    with pytest.raises(UnlearnConfigError, match="unlearn_method.importance='exact'; allowed"):
        SSD(importance="exact")
    with pytest.raises(UnlearnConfigError, match="unknown keys"):
        SSD(lamda=1.0)
