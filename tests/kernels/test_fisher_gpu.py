"""CUDA checks of the fused Fisher kernels (skipped without a GPU; all passed on an H200 on 2026-12-04, Triton 3.6).

Run on a GPU machine with ``pytest -m gpu tests/kernels/test_fisher_gpu.py`` (unset TRITON_INTERPRET). Timing on a GPU:
``python experiments/bench/fisher.py --device cuda``.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.models import rel_err, tiny_vit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="unset TRITON_INTERPRET for the GPU kernels"),
]


@pytest.mark.parametrize(("b", "t", "o", "k"), [(64, 65, 192, 576), (32, 197, 768, 192), (7, 3, 33, 17)])
def test_seq_kernel_cuda(b: int, t: int, o: int, k: int) -> None:
    from kernels.fisher_rules import seq_sqsum_torch
    from kernels.fisher_triton import seq_sqsum

    g = torch.randn(b, t, o, device="cuda")
    x = torch.randn(b, t, k, device="cuda")
    assert rel_err(seq_sqsum(g, x).double(), seq_sqsum_torch(g.double(), x.double(), None)) < 1e-5


@pytest.mark.parametrize(("b", "o", "k"), [(256, 1024, 3072), (5, 7, 3)])
def test_vec_kernel_cuda(b: int, o: int, k: int) -> None:
    from kernels.fisher_rules import vec_sqsum_torch
    from kernels.fisher_triton import vec_sqsum

    g, x = torch.randn(b, o, device="cuda"), torch.randn(b, k, device="cuda")
    assert rel_err(vec_sqsum(g, x).double(), vec_sqsum_torch(g.double(), x.double())) < 1e-5


def test_fisher_diagonal_auto_on_cuda_matches_reference() -> None:
    from kernels import fisher_diagonal

    torch.manual_seed(0)
    model = tiny_vit().cuda()
    x = torch.randn(16, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    fast = fisher_diagonal(model, [(x, y)], backend="auto")
    ref = fisher_diagonal(model.double(), [(x.double(), y)], backend="reference")
    assert fast.fallback == ()
    for n in ref.diag:
        assert rel_err(fast.diag[n].double(), ref.diag[n]) < 1e-4, n
