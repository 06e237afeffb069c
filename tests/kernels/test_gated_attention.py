"""``kernels.gated_class_attention``: every backend against the literal reference formula, values and gradients."""

from __future__ import annotations

import pytest
import torch

from kernels import gated_class_attention
from kernels.gated_attention_reference import gated_class_attention_reference


def _inputs(b, t, n, d, per_token, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    tokens = r(b, t, d)
    x = r(t, b, n, d) if per_token else r(b, n, d)
    m0 = torch.rand(t, d, generator=g, dtype=torch.float64)
    m0[: t // 2] = (m0[: t // 2] > 0.5).double()  # old tokens binarised, the others soft
    w = [r(d, d) * d**-0.5 for _ in range(4)]
    pb = r(d)
    biases = [r(d) for _ in range(3)] if bias else [None, None, None]
    args = [tokens, x, m0, *w, pb]
    args = [a.to(dtype).requires_grad_(True) for a in args]
    biases = [None if v is None else v.to(dtype).requires_grad_(True) for v in biases]
    return args, biases


def _call(args, biases, heads, backend):
    tokens, x, m0, wq, wk, wv, wp, pb = args
    return gated_class_attention(tokens, x, m0, wq, wk, wv, wp, pb, heads, *biases, backend=backend)


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_torch_backend_equals_the_reference_values_and_gradients(per_token, bias):
    args, biases = _inputs(3, 4, 7, 12, per_token, torch.float64, bias)
    heads = 3
    ref = gated_class_attention_reference(*args[:8], heads, *biases)
    got = _call(args, biases, heads, "torch")
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    leaves = [a for a in args + biases if a is not None]
    want = torch.autograd.grad(ref, leaves, g, allow_unused=True)
    have = torch.autograd.grad(got, leaves, g, allow_unused=True)
    for w, h in zip(want, have, strict=True):
        if w is None or h is None:  # the key bias: constant over the keys, zero gradient either way
            assert (w is None or w.abs().max() < 1e-12) and (h is None or h.abs().max() < 1e-12)
            continue
        torch.testing.assert_close(h, w, rtol=1e-10, atol=1e-12)


def test_float32_within_1e5():
    args, biases = _inputs(8, 10, 65, 48, False, torch.float32)
    ref = gated_class_attention_reference(*[a.double() for a in args[:8]], 4, *[b.double() for b in biases])
    got = _call(args, biases, 4, "torch")
    assert (got.double() - ref).abs().max() < 1e-5


def test_binarised_mask_units_outside_the_mask_are_exact_zeros():
    args, biases = _inputs(2, 2, 5, 12, False, torch.float32)
    with torch.no_grad():
        args[2].copy_((torch.arange(12) % 3 == 0).float().expand(2, 12))
    out = _call(args, biases, 3, "torch")
    assert torch.all(out[:, :, torch.arange(12) % 3 != 0] == 0)


def test_bad_shapes_and_backends_are_refused():
    args, biases = _inputs(2, 3, 5, 12, False)
    with pytest.raises(ValueError, match="backend"):
        _call(args, biases, 3, "cuda")
    bad = list(args)
    bad[2] = args[2][:2]
    with pytest.raises(ValueError, match="m0"):
        _call(bad, biases, 3, "torch")
    with pytest.raises(ValueError, match="num_heads"):
        _call(args, biases, 5, "torch")


def test_auto_uses_torch_on_cpu():
    args, biases = _inputs(2, 3, 5, 12, False)
    torch.testing.assert_close(_call(args, biases, 3, "auto"), _call(args, biases, 3, "torch"))
