"""Fused Triton kernels against the torch rules, on CPU tensors through TRITON_INTERPRET=1 (set in conftest)."""

from __future__ import annotations

import os

import pytest
import torch

from kernels import fisher_diagonal
from kernels.fisher_rules import seq_sqsum_torch, vec_sqsum_torch
from tests.kernels.models import TokenNet, rel_err

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


@pytest.mark.parametrize(("b", "t", "o", "k", "split"), [(5, 19, 40, 37, 2), (3, 1, 8, 70, None), (2, 33, 33, 5, 1)])
def test_seq_kernel(b: int, t: int, o: int, k: int, split: int | None) -> None:
    from kernels.fisher_triton import seq_sqsum

    gen = torch.Generator().manual_seed(b * t)
    g = torch.randn(b, t, o, generator=gen)
    x = torch.randn(b, t, k, generator=gen)[:, :, :k]
    got = seq_sqsum(g, x.transpose(1, 2).contiguous().transpose(1, 2), split=split)  # strided x
    again = seq_sqsum(g, x, out=got.clone())
    assert rel_err(again.double(), 2 * got.double()) < 1e-6  # adds into out
    expect = seq_sqsum_torch(g.double(), x.double(), None)
    assert got.shape == (o, k) and got.dtype == torch.float32
    assert rel_err(got.double(), expect) < 1e-5


@pytest.mark.parametrize(("b", "o", "k"), [(23, 40, 37), (1, 5, 3)])
def test_vec_kernel(b: int, o: int, k: int) -> None:
    from kernels.fisher_triton import vec_sqsum

    gen = torch.Generator().manual_seed(b)
    g, x = torch.randn(b, o, generator=gen), torch.randn(b, k, generator=gen)
    assert rel_err(vec_sqsum(g, x).double(), vec_sqsum_torch(g.double(), x.double())) < 1e-5


def test_float64_uses_torch_rule() -> None:
    from kernels.fisher_triton import seq_sqsum

    g, x = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    assert seq_sqsum(g, x).dtype == torch.float64  # not the float32 kernel


def test_fisher_diagonal_triton_backend() -> None:
    """backend='triton' routes the Linear rules through the kernels (token Linear called twice, vector head)."""
    torch.manual_seed(0)
    model = TokenNet(vocab=7, dim=8)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (6, 4), generator=gen)
    y = torch.randint(0, 4, (6,), generator=gen)
    calls = []
    import kernels.fisher_triton as ft

    orig = ft._seq_sqsum_kernel

    class Spy:
        def __getitem__(self, grid: tuple) -> object:
            calls.append(grid)
            return orig[grid]

    ft._seq_sqsum_kernel = Spy()
    try:
        tri = fisher_diagonal(model, [(x, y)], backend="triton")
    finally:
        ft._seq_sqsum_kernel = orig
    assert calls  # the fused kernel ran
    ref = fisher_diagonal(model.double(), [(x, y)], backend="reference")
    for n in ref.diag:
        assert rel_err(tri.diag[n].double(), ref.diag[n]) < 1e-5, n
