"""CUDA checks of the compiled gated class-attention kernels (``kernels/gated_attention_triton.py``); skipped without a
GPU (all passed on an H200 on 2026-12-04, Triton 3.6). ``make gpu-check`` runs them
(``pytest -m gpu``, TRITON_INTERPRET unset); timing: ``python -m experiments.bench.gated_attention --device cuda``.
"""

from __future__ import annotations

import os

import pytest
import torch

from kernels import gated_class_attention
from kernels.gated_attention_reference import gated_class_attention_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="unset TRITON_INTERPRET for the GPU kernels"),
]


def _inputs(b, t, n, d, per_token):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float64)  # noqa: E731
    x = r(t, b, n, d) if per_token else r(b, n, d)
    m0 = (torch.rand(t, d, generator=g, device="cuda", dtype=torch.float64) > 0.5).double()
    m0[-1] = torch.sigmoid(r(d))
    return [r(b, t, d), x, m0, *[r(d, d) * d**-0.5 for _ in range(4)], r(d)], [r(d), r(d), r(d)]


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize(("b", "t", "n", "d", "h"), [(128, 10, 64, 192, 3), (16, 5, 196, 384, 12), (3, 2, 5, 20, 4)])
def test_compiled_kernels_match_the_reference_fp32(b, t, n, d, h, per_token):
    args, biases = _inputs(b, t, n, d, per_token)
    ref_leaves = [a.clone().requires_grad_(True) for a in args + biases]
    ref = gated_class_attention_reference(*ref_leaves[:8], h, *ref_leaves[8:])
    leaves = [a.float().requires_grad_(True) for a in args + biases]
    got = gated_class_attention(*leaves[:8], h, *leaves[8:], backend="triton")
    assert (got.double() - ref).abs().max() < 1e-5
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, ref_leaves, g)
    have = torch.autograd.grad(got, leaves, g.float(), allow_unused=True)
    for i, (w, hv) in enumerate(zip(want, have, strict=True)):
        if i == 9:  # the key bias: no effect on the output
            continue
        assert (hv.double() - w).abs().max() / w.abs().max().clamp(min=1.0) < 1e-5, i


def test_compiled_kernels_bf16_and_auto_dispatch(monkeypatch):
    args, biases = _inputs(64, 10, 64, 192, False)
    ref = gated_class_attention_reference(*args, 3, *biases)
    got = gated_class_attention(*[a.bfloat16() for a in args], 3, *[v.bfloat16() for v in biases], backend="triton")
    assert (got.double() - ref).abs().max() / ref.abs().max() < 1e-2
    import kernels.gated_attention_triton as gt

    calls = []
    orig = gt.attend_triton
    monkeypatch.setattr(gt, "attend_triton", lambda *a: calls.append(1) or orig(*a))
    fp32 = [a.float() for a in args], [v.float() for v in biases]
    auto = gated_class_attention(*fp32[0], 3, *fp32[1], backend="auto")
    assert not calls, "backend='auto' dispatched the Triton kernels; on CUDA it takes the torch form (measured faster)"
    torch.testing.assert_close(auto, gated_class_attention(*fp32[0], 3, *fp32[1], backend="torch"))
