"""OWLoRA's weighted adapters (cl/modules/weighted_lora.py): zero initial update, the task-0 SVD basis actually loaded,
projected steps orthogonal to every older subspace, the reference's projection formula, the rank search."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cl.modules.weighted_lora import OWLoRALinear, attach_owlora, energy_rank, orthonormal_rows


def _layer(seed: int = 0, out_f: int = 12, in_f: int = 10, adapters: int = 2, rank: int = 3) -> OWLoRALinear:
    torch.manual_seed(seed)
    return OWLoRALinear(nn.Linear(in_f, out_f), [rank] * adapters)


def test_new_adapter_starts_at_zero_update():
    base = nn.Linear(10, 12)
    x = torch.randn(5, 10)
    want = base(x)
    layer = OWLoRALinear(base, [3, 3])
    for active in range(3):
        layer.active.fill_(active)
        torch.testing.assert_close(layer(x), want)
    assert layer.adapters[0].down.abs().sum() > 0 and torch.all(layer.adapters[0].scales == 1)


def test_adapter_output_is_u_diag_s_d():
    layer = _layer()
    a = layer.adapters[0]
    with torch.no_grad():
        a.up.normal_()
        a.scales.uniform_(0.5, 2.0)
    layer.active.fill_(1)
    x = torch.randn(4, 10)
    want = x @ layer.weight.T + layer.bias + x @ (a.up @ torch.diag(a.scales) @ a.down).T
    torch.testing.assert_close(layer(x), want)


@pytest.mark.parametrize("mode", ["svd", "reference"])
def test_task0_svd_basis_is_the_one_loaded(mode):
    """The stored first subspace is the principal subspace of the task-0 weights (fails on the reference's defect:
    its placeholder keeps random D and zero U, so projecting does not remove principal directions)."""
    layer = _layer(out_f=20, in_f=16)
    w0 = layer.weight.detach().clone()
    u, s, vh = torch.linalg.svd(w0.double(), full_matrices=False)
    d = layer.save_initial_basis(0.99, truncate=True, mode=mode)
    assert d == energy_rank(s, 0.99)
    p_in = vh[:d].T @ vh[:d]  # projector on the task-0 input subspace V_d
    p_out = u[:, :d] @ u[:, :d].T
    got_in = layer.basis_in[:d].double()
    got_out = layer.basis_out[:, :d].double()
    loaded = torch.allclose(got_in.T @ got_in, p_in, atol=1e-5) and torch.allclose(
        got_out @ got_out.T, p_out, atol=1e-5
    )
    # a projected gradient has no component left in V_d
    layer.prepare(0, "orthonormal")
    g = torch.randn(3, 16)
    layer.adapters[0].down.grad = g.clone()
    layer.project_grads(0, "orthonormal")
    protected = float((layer.adapters[0].down.grad.double() @ vh[:d].T).abs().max()) < 1e-5
    assert (loaded and protected) == (mode == "svd")
    # the base weights are the rank-d reconstruction
    torch.testing.assert_close(layer.weight.double(), (u[:, :d] * s[:d]) @ vh[:d], atol=1e-5, rtol=1e-5)


def test_projected_adam_steps_keep_the_new_adapter_orthogonal_to_every_older_subspace():
    layer = _layer(out_f=24, in_f=20, adapters=3, rank=3)
    layer.save_initial_basis(0.6, truncate=True)  # a low-energy basis leaves room in the complement
    layer.active.fill_(3)
    torch.manual_seed(1)
    for index in range(3):
        layer.prepare(index, "orthonormal")
        a = layer.adapters[index]
        opt = torch.optim.Adam(a.parameters(), lr=0.05)
        for _ in range(3):
            opt.zero_grad()
            loss = (layer(torch.randn(8, 20)) - torch.randn(8, 24)).pow(2).mean() + a.ortho_penalty()
            loss.backward()
            layer.project_grads(index, "orthonormal")
            opt.step()
            layer.project_params(index)
        assert float(a.up.abs().max()) > 1e-3  # it trained
        ins, outs = layer.older(index)
        for m in ins:
            assert float((a.down @ m.T).abs().max()) < 1e-6
        for m in outs:
            assert float((m.T @ a.up).abs().max()) < 1e-6


def test_reference_projection_is_the_unnormalised_sum():
    layer = _layer(adapters=3)
    layer.save_initial_basis(0.9, truncate=False, mode="reference")
    with torch.no_grad():
        for a in layer.adapters:
            a.up.normal_()
    g_d, g_u = torch.randn(3, 10), torch.randn(12, 3)
    a = layer.adapters[2]
    a.down.grad, a.up.grad = g_d.clone(), g_u.clone()
    layer.project_grads(2, "reference")
    d = int(layer.basis_rank)
    old = [layer.basis_in[:d], layer.adapters[0].down, layer.adapters[1].down]
    old_u = [layer.basis_out[:, :d], layer.adapters[0].up, layer.adapters[1].up]
    want_d = g_d - sum(g_d @ (m.T @ m) for m in old)
    want_u = g_u - sum((m @ m.T) @ g_u for m in old_u)
    torch.testing.assert_close(a.down.grad, want_d.detach())
    torch.testing.assert_close(a.up.grad, want_u.detach())


def test_energy_rank_allows_full_rank():
    assert energy_rank(torch.tensor([3.0, 1.0, 0.1]), 0.99) == 2  # 10 / 10.01 > 0.99
    assert energy_rank(torch.tensor([1.0, 1.0, 1.0]), 0.99) == 3  # the reference stops at 2 (min(out, in) - 1)
    assert energy_rank(torch.tensor([5.0, 0.0]), 0.99) == 1


def test_orthonormal_rows_spans_the_rows():
    rows = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    q = orthonormal_rows(rows)
    assert q.shape == (2, 3)
    torch.testing.assert_close(q @ q.T, torch.eye(2))
    torch.testing.assert_close(rows @ q.T @ q, rows, atol=1e-6, rtol=1e-6)


def test_attach_wraps_every_linear_with_qkv_rank_factor():
    model = nn.Sequential()
    model.add_module("qkv", nn.Linear(4, 12))
    model.add_module("fc", nn.Linear(12, 6))
    model.add_module("score", nn.Linear(6, 1))  # one output: not adapted (as the reference)
    layers = attach_owlora(model, rank=2, n_adapters=3, qkv_rank_factor=3)
    assert sorted(layers) == ["fc", "qkv"]
    assert layers["qkv"].adapters[0].rank == 6 and layers["fc"].adapters[0].rank == 2
    assert isinstance(model.qkv, OWLoRALinear) and type(model.score) is nn.Linear
