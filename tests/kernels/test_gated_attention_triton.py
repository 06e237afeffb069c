"""``kernels.gated_class_attention(backend="triton")``: the fused Triton kernels (forward and backward) against the
literal reference formula and autograd of it, on CPU tensors through ``TRITON_INTERPRET=1`` (set in conftest).

Shapes are small and odd on purpose: row counts ``T x H`` and token counts ``N`` that are not multiples of the blocks
(16 rows, 16/32 tokens), a feature dimension that is not a power of two, so every mask of the kernels is exercised.
"""

from __future__ import annotations

import os

import pytest
import torch

from kernels import gated_class_attention

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


def _inputs(b, t, n, d, per_token, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    tokens = r(b, t, d)
    x = r(t, b, n, d) if per_token else r(b, n, d)
    m0 = torch.rand(t, d, generator=g, dtype=torch.float64)
    m0[: t // 2] = (m0[: t // 2] > 0.5).double()  # old tokens binarised, the newest soft
    w = [r(d, d) * d**-0.5 * 2 for _ in range(4)]  # x2: peaked enough softmax rows
    return [tokens, x, m0, *w, r(d)], [r(d), r(d), r(d)]


def _run(args, biases, heads, backend, dtype):
    leaves = [a.to(dtype).requires_grad_(True) for a in args]
    bs = [v.to(dtype).requires_grad_(True) for v in biases]
    out = gated_class_attention(*leaves, heads, *bs, backend=backend)
    return out, leaves + bs


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize(("b", "t", "n", "d", "h"), [(2, 3, 7, 12, 3), (3, 7, 37, 20, 4)])
def test_triton_float32_values_within_1e5_and_gradients_equal_autograd_of_the_reference(b, t, n, d, h, per_token):
    args, biases = _inputs(b, t, n, d, per_token)
    ref, ref_leaves = _run(args, biases, h, "reference", torch.float64)
    got, leaves = _run(args, biases, h, "triton", torch.float32)
    assert got.dtype == torch.float32
    assert (got.double() - ref).abs().max() < 1e-5
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = torch.autograd.grad(ref, ref_leaves, g)
    have = torch.autograd.grad(got, leaves, g.float(), allow_unused=True)
    names = ["tokens", "x", "m0", "wq", "wk", "wv", "wproj", "bproj", "bq", "bk", "bv"]
    for name, w, hv in zip(names, want, have, strict=True):
        if name == "bk":  # constant over the keys: no effect on the output
            assert w.abs().max() < 1e-12 and (hv is None or hv.abs().max() == 0)
            continue
        scale = w.abs().max().clamp(min=1.0)
        assert (hv.double() - w).abs().max() / scale < 1e-5, name


def test_triton_bfloat16_within_1e2():
    args, biases = _inputs(2, 5, 19, 24, False, seed=3)
    ref, _ = _run(args, biases, 3, "reference", torch.float64)
    got, _ = _run(args, biases, 3, "triton", torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert (got.double() - ref).abs().max() / ref.abs().max() < 1e-2


def test_attend_kernel_softmax_includes_the_task_token_itself():
    """Zero patch tokens score 0, the task token's own score is ~50 |cls|: the weighted mean is the task token
    (without the j = 0 term it would be 0)."""
    from kernels.gated_attention_triton import attend_triton

    tokens = torch.randn(2, 2, 16)
    qt = 50 * tokens[:, :, None, :].expand(2, 2, 3, 16).contiguous() / tokens.norm(dim=-1)[:, :, None, None]
    x = torch.zeros(2, 5, 16)
    zbar = attend_triton(tokens, x, qt)
    torch.testing.assert_close(zbar, tokens[:, :, None, :].expand_as(zbar), rtol=1e-4, atol=1e-4)


def test_triton_backend_refuses_float64_with_a_clear_error():
    args, biases = _inputs(2, 2, 5, 12, False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors of float32"):
        _run(args, biases, 3, "triton", torch.float64)


def test_auto_stays_on_torch_for_cpu_tensors():
    args, biases = _inputs(2, 3, 5, 12, True)
    auto, _ = _run(args, biases, 3, "auto", torch.float32)
    torch_, _ = _run(args, biases, 3, "torch", torch.float32)
    assert torch.equal(auto, torch_)


def test_gcab_with_kernel_backend_triton_equals_torch_in_loss_and_gradients():
    """method.kernel_backend=triton inside GCAB (experience 1: an old binarised token and the new soft one): the same
    training loss and parameter gradients as the torch backend."""
    from tests.methods.gcab_helpers import tiny_gcab, tiny_stream

    stream = tiny_stream()
    grads = {}
    for backend in ("torch", "triton"):
        m = tiny_gcab(stream, kernel_backend=backend)
        m.on_experience_start(stream.experiences[0])
        m.on_experience_end(stream.experiences[0], None)
        m.on_experience_start(stream.experiences[1])
        x, y = stream.experiences[1].train.tensors
        m._s = 7.0
        loss = m.compute_loss(x, y, None)
        loss.backward()
        grads[backend] = (loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    (l0, g0), (l1, g1) = grads["torch"], grads["triton"]
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys() and any(k.startswith("block.attn.") for k in g0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-5, msg=k)
