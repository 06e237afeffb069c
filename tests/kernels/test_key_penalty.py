"""RegLoRA's gathered key-position penalty (kernels/key_penalty.py): the fused C++ pass and the sparse-CSR torch
backend equal the reference's full form ``(B @ A)[rows, cols].abs().mean()`` and its autograd gradient."""

from __future__ import annotations

import pytest
import torch

from cl.modules.lora_keys import Pattern
from kernels import key_penalty

needs_cpp = pytest.mark.skipif(not key_penalty.cpp_available(), reason="the C++ kernel did not build here")


def _case(d_out: int, d_in: int, rank: int, count: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(rank, d_in, generator=g, dtype=dtype, requires_grad=True)  # noqa: N806
    B = torch.randn(d_out, rank, generator=g, dtype=dtype, requires_grad=True)  # noqa: N806
    flat = torch.randint(0, d_out * d_in, (count,), generator=g)  # duplicates included, as the cumulative list
    return A, B, flat


def _full(A, B, flat):  # noqa: N803
    return (B @ A).flatten()[flat].abs().mean()


@needs_cpp
@pytest.mark.parametrize(
    ("d_out", "d_in", "rank", "threads"),
    [
        (40, 30, 8, 1),  # a compile-time rank
        (40, 30, 5, 1),  # a rank read at run time
        (70, 700, 128, 1),  # float64 r=128: 256-column tiles, so rows are visited over three tiles
        (70, 700, 16, 2),  # two threads: per-thread dA^T buffers summed
    ],
)
def test_cpp_and_torch_backends_equal_the_full_form_and_its_gradient(d_out, d_in, rank, threads):
    A, B, flat = _case(d_out, d_in, rank, count=d_out * d_in // 5, seed=rank)  # noqa: N806
    full = _full(A, B, flat)
    grad_a, grad_b = torch.autograd.grad(full, (A, B))
    pattern = Pattern.build(flat, (d_out, d_in), deduplicate=False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for backend in ("cpp", "torch"):
            value = key_penalty.gathered_abs_mean(A, B, *pattern.arguments(A.dtype), backend=backend)
            ga, gb = torch.autograd.grad(3.0 * value, (A, B))
            assert torch.allclose(value, full, rtol=0, atol=1e-12), backend
            assert torch.allclose(ga, 3.0 * grad_a, rtol=0, atol=1e-12), backend
            assert torch.allclose(gb, 3.0 * grad_b, rtol=0, atol=1e-12), backend
    finally:
        torch.set_num_threads(before)


@needs_cpp
def test_cpp_backend_float32_and_a_zero_product_has_zero_gradient():
    A, B, flat = _case(50, 60, 8, count=600, seed=1, dtype=torch.float32)  # noqa: N806
    with torch.no_grad():
        B[7].zero_()  # row 7 of B A is exactly zero: sign 0, no gradient through it
    full = _full(A, B, flat)
    grad_a, grad_b = torch.autograd.grad(full, (A, B))
    pattern = Pattern.build(flat, (50, 60), deduplicate=False)
    value = key_penalty.gathered_abs_mean(A, B, *pattern.arguments(A.dtype), backend="cpp")
    ga, gb = torch.autograd.grad(value, (A, B))
    assert torch.allclose(value, full, rtol=1e-5)
    assert torch.allclose(ga, grad_a, atol=1e-6) and torch.allclose(gb, grad_b, atol=1e-6)
    assert bool((gb[7] == 0).all())


@needs_cpp
def test_cpp_backend_bf16_adapters_return_bf16_gradients():
    A, B, flat = _case(30, 20, 8, count=100, seed=2)  # noqa: N806
    A16 = A.detach().bfloat16().requires_grad_()  # noqa: N806
    B16 = B.detach().bfloat16().requires_grad_()  # noqa: N806
    pattern = Pattern.build(flat, (30, 20), deduplicate=False)
    value = key_penalty.gathered_abs_mean(A16, B16, *pattern.arguments(A16.dtype), backend="cpp")
    value.backward()
    assert value.dtype == torch.float32 and A16.grad.dtype == B16.grad.dtype == torch.bfloat16
    ref = _full(A16.detach().float(), B16.detach().float(), flat)
    assert torch.allclose(value, ref, rtol=1e-5)


def test_a_wrong_backend_names_the_config_key_and_the_allowed_values():
    A, B, flat = _case(4, 4, 2, count=3, seed=0)  # noqa: N806
    pattern = Pattern.build(flat, (4, 4), deduplicate=False)
    with pytest.raises(ValueError, match=r"method\.penalty_backend='fast'; allowed: auto, torch, cpp"):
        key_penalty.gathered_abs_mean(A, B, *pattern.arguments(A.dtype), backend="fast")
