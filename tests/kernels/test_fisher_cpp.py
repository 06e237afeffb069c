"""The fused C++ sequence product of the Fisher's Linear rule (``kernels.fisher_cpp``): equal to the per-sample einsum
for every tile shape (rows and columns that fill no register tile, one token, one sample, strided inputs), adds into
the accumulator, and is what the fast backend runs on CPU."""

from __future__ import annotations

import pytest
import torch

from kernels import fisher_cpp
from kernels.fisher import _sqsum_kernels
from kernels.fisher_rules import seq_sqsum_torch
from tests.kernels.models import rel_err

needs_cpp = pytest.mark.skipif(not fisher_cpp.available(), reason="the C++ kernel did not build here")


def _expect(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bto,btk->bok", g.double(), x.double()).square().sum(0)


@needs_cpp
@pytest.mark.parametrize(
    "shape",  # (B, T, O, K): O over and under one 48-row block / 6- and 12-row tiles, K with a scalar remainder
    [(3, 5, 7, 9), (4, 17, 50, 33), (1, 1, 12, 32), (2, 3, 97, 64), (5, 2, 13, 100), (64, 17, 64, 48)],
)
def test_equals_per_sample_einsum_float64(shape: tuple[int, int, int, int]) -> None:
    b, t, o, k = shape
    gen = torch.Generator().manual_seed(sum(shape))
    g = torch.randn(b, t, o, generator=gen, dtype=torch.float64)
    x = torch.randn(b, t, k, generator=gen, dtype=torch.float64)
    out = torch.full((o, k), 2.0, dtype=torch.float64)
    got = fisher_cpp.seq_sqsum(g, x, None, out)
    assert got is out  # added in place
    assert rel_err(out - 2.0, _expect(g, x)) < 1e-13
    assert rel_err(fisher_cpp.seq_sqsum(g, x), _expect(g, x)) < 1e-13  # a fresh result without out


@needs_cpp
def test_strided_inputs_and_float32() -> None:
    """Transposed views (the conv rule passes (B, L, C k k) views of unfolded patches) and float32 within rounding."""
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(6, 40, 17, generator=gen).transpose(1, 2)  # (6, 17, 40), not contiguous
    x = torch.randn(6, 70, 17, generator=gen).transpose(1, 2)  # (6, 17, 70)
    assert not g.is_contiguous() and not x.is_contiguous()
    assert rel_err(fisher_cpp.seq_sqsum(g, x, None, torch.zeros(40, 70)).double(), _expect(g, x)) < 2e-6


def test_tensors_it_does_not_take_go_to_the_torch_form() -> None:
    """A float64 product into a float32 accumulator, a strided accumulator, half precision: the torch form's result."""
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(3, 4, 10, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 4, 20, generator=gen, dtype=torch.float64)
    out32 = torch.ones(10, 20)
    fisher_cpp.seq_sqsum(g, x, None, out32)
    assert rel_err(out32.double(), _expect(g, x) + 1) < 1e-6
    strided = torch.zeros(20, 10, dtype=torch.float64).t()
    fisher_cpp.seq_sqsum(g, x, None, strided)
    assert rel_err(strided, _expect(g, x)) < 1e-13
    half = fisher_cpp.seq_sqsum(g.bfloat16(), x.bfloat16(), None, torch.zeros(10, 20, dtype=torch.bfloat16))
    assert torch.equal(half, seq_sqsum_torch(g.bfloat16(), x.bfloat16(), None))


@needs_cpp
def test_fast_backend_uses_it_on_cpu() -> None:
    seq, _ = _sqsum_kernels("fast", torch.device("cpu"))
    assert seq is fisher_cpp.seq_sqsum
    assert _sqsum_kernels("reference", torch.device("cpu"))[0] is seq_sqsum_torch


@needs_cpp
@pytest.mark.parametrize("select", ["both", "weight", "bias"])
def test_linear_rule_with_bias_in_one_call(select: str) -> None:
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(5, 9, 30, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 9, 20, generator=gen, dtype=torch.float64)
    w = torch.zeros(30, 20, dtype=torch.float64) if select != "bias" else None
    b = torch.zeros(30, dtype=torch.float64) if select != "weight" else None
    assert fisher_cpp.linear(g, x, w, b)
    if w is not None:
        assert rel_err(w, _expect(g, x)) < 1e-13
    if b is not None:
        assert rel_err(b, g.sum(1).square().sum(0)) < 1e-13
    assert not fisher_cpp.linear(g, x, torch.zeros(20, 30, dtype=torch.float64), None)  # wrong shape: not taken


@needs_cpp
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("shape", [(4, 7, 33), (6, 50), (3, 2, 5, 16)])  # tokens, vectors, two token dims
def test_norm_rule_equals_per_sample_autograd(rms: bool, shape: tuple[int, ...]) -> None:
    """sum_i (dl_i/dw)^2 and (dl_i/db)^2 of a norm layer for l_i = <g_i, norm(x_i)>, by autograd per sample."""
    gen = torch.Generator().manual_seed(8)
    c = shape[-1]
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 1
    g = torch.randn(*shape, generator=gen, dtype=torch.float64)
    layer = (torch.nn.RMSNorm(c, eps=1e-3) if rms else torch.nn.LayerNorm(c, eps=1e-3)).double()
    expect = {n: torch.zeros_like(p) for n, p in layer.named_parameters()}
    for i in range(shape[0]):
        grads = torch.autograd.grad((layer(x[i : i + 1]) * g[i : i + 1]).sum(), list(layer.parameters()))
        for n, gr in zip(expect, grads):
            expect[n] += gr.square()
    w, b = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    assert fisher_cpp.norm(x, g, w, None if rms else b, 1e-3, rms)
    assert rel_err(w, expect["weight"]) < 1e-12
    if not rms:
        assert rel_err(b, expect["bias"]) < 1e-12
