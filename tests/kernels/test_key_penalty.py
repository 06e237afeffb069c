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


def _forms(pattern, A):  # noqa: N803
    """(name, kwargs) of every backend: the C++ pass over the column-tiled layout, over the row-major pattern as one
    tile, and the sparse-CSR torch backend."""
    untiled = {"crow": pattern.crow, "col": pattern.col, "weight": pattern.weight(A.dtype), "backend": "cpp"}
    return [("cpp", pattern.arguments(A, "cpp")), ("cpp_untiled", untiled), ("torch", pattern.arguments(A, "torch"))]


@needs_cpp
@pytest.mark.parametrize(
    ("d_out", "d_in", "rank", "threads"),
    [
        (40, 30, 8, 1),  # a compile-time rank
        (40, 30, 5, 1),  # a rank read at run time
        (70, 700, 128, 1),  # float64 r=128: 256-column tiles, so rows are visited over three tiles
        (33, 1500, 64, 1),  # float64 r=64: 512-column tiles, the last one ragged
        (70, 700, 16, 2),  # two threads: per-thread dA^T buffers summed
        (70, 700, 128, 2),  # two threads over three tiles
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
        for form, kwargs in _forms(pattern, A):
            value = key_penalty.gathered_abs_mean(A, B, **kwargs)
            ga, gb = torch.autograd.grad(3.0 * value, (A, B))
            assert torch.allclose(value, full, rtol=0, atol=1e-12), form
            assert torch.allclose(ga, 3.0 * grad_a, rtol=0, atol=1e-12), form
            assert torch.allclose(gb, 3.0 * grad_b, rtol=0, atol=1e-12), form
    finally:
        torch.set_num_threads(before)


@needs_cpp
@pytest.mark.parametrize(
    ("rank", "d_in", "threads"),
    [(16, 90, 1), (32, 90, 1), (64, 1500, 1), (128, 1100, 1), (128, 1100, 2)],  # 128: 512-column tiles, three
)
def test_cpp_backend_float32_ranks_of_sixteen_equal_the_float64_full_form(rank, d_in, threads):
    """Float32 at ranks 16-128 takes the AVX-512 pass where the CPU has it (B_i in registers, four dot products at a
    time): value and gradients equal the full form computed in float64 from the same float32 factors."""
    A, B, flat = _case(45, d_in, rank, count=45 * d_in // 4, seed=rank + threads, dtype=torch.float32)  # noqa: N806
    with torch.no_grad():
        B[7].zero_()  # row 7 of B A is exactly zero: sign 0, no gradient through it
    A64, B64 = A.detach().double().requires_grad_(), B.detach().double().requires_grad_()  # noqa: N806
    full = _full(A64, B64, flat)
    grad_a, grad_b = torch.autograd.grad(full, (A64, B64))
    pattern = Pattern.build(flat, (45, d_in), deduplicate=False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for form, kwargs in _forms(pattern, A):
            value = key_penalty.gathered_abs_mean(A, B, **kwargs)
            ga, gb = torch.autograd.grad(value, (A, B))
            assert value.dtype == ga.dtype == gb.dtype == torch.float32, form
            assert abs(value.item() - full.item()) <= 1e-5 * full.item(), form
            assert torch.allclose(ga.double(), grad_a, rtol=0, atol=1e-5 * grad_a.abs().max().item()), form
            assert torch.allclose(gb.double(), grad_b, rtol=0, atol=1e-5 * grad_b.abs().max().item()), form
            assert bool((gb[7] == 0).all()), form
    finally:
        torch.set_num_threads(before)


@needs_cpp
def test_tile_order_lists_positions_tile_major_with_columns_sorted_in_each_row():
    # rows: 0 -> columns 0, 3, 4; 1 -> columns 1, 2; tiles of 2 columns: {0, 1}, {2, 3}, {4}
    crow = torch.tensor([0, 3, 5], dtype=torch.int32)
    col = torch.tensor([0, 3, 4, 1, 2], dtype=torch.int32)
    ptr, order = torch.ops.cl_kernels.tile_order(crow, col, 5, 2)
    assert ptr.tolist() == [0, 1, 2, 3, 4, 5, 5]  # (tile, row) = (0,0) (0,1) (1,0) (1,1) (2,0) (2,1)
    assert order.tolist() == [0, 3, 1, 4, 2]
    weight = torch.arange(5, dtype=torch.float32)
    ptr2, col2, weight2 = key_penalty.tile_layout(crow, col, weight, 5, 2)
    assert torch.equal(ptr2, ptr) and col2.tolist() == [0, 1, 3, 2, 4] and weight2.tolist() == [0, 3, 1, 4, 2]
    assert torch.equal(torch.ops.cl_kernels.tile_order(crow, col, 5, 8)[0], crow)  # one tile: the CSR row pointer
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.cl_kernels.tile_order(crow, col, 4, 2)


@needs_cpp
def test_cpp_backend_without_a_gradient_computes_the_same_value():
    A, B, flat = _case(60, 50, 16, count=900, seed=3, dtype=torch.float32)  # noqa: N806
    pattern = Pattern.build(flat, (60, 50), deduplicate=False)
    kwargs = pattern.arguments(A, "cpp")
    with_grad = key_penalty.gathered_abs_mean(A, B, **kwargs)
    with torch.no_grad():
        values_only = key_penalty.gathered_abs_mean(A, B, **kwargs)
    assert with_grad.grad_fn is not None and values_only.grad_fn is None
    assert values_only.item() == with_grad.item()


@needs_cpp
def test_cpp_backend_float32_and_a_zero_product_has_zero_gradient():
    A, B, flat = _case(50, 60, 8, count=600, seed=1, dtype=torch.float32)  # noqa: N806
    with torch.no_grad():
        B[7].zero_()  # row 7 of B A is exactly zero: sign 0, no gradient through it
    full = _full(A, B, flat)
    grad_a, grad_b = torch.autograd.grad(full, (A, B))
    pattern = Pattern.build(flat, (50, 60), deduplicate=False)
    value = key_penalty.gathered_abs_mean(A, B, **pattern.arguments(A, "cpp"))
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
    value = key_penalty.gathered_abs_mean(A16, B16, **pattern.arguments(A16, "cpp"))
    value.backward()
    assert value.dtype == torch.float32 and A16.grad.dtype == B16.grad.dtype == torch.bfloat16
    ref = _full(A16.detach().float(), B16.detach().float(), flat)
    assert torch.allclose(value, ref, rtol=1e-5)


def test_a_wrong_backend_names_the_config_key_and_the_allowed_values():
    A, B, flat = _case(4, 4, 2, count=3, seed=0)  # noqa: N806
    pattern = Pattern.build(flat, (4, 4), deduplicate=False)
    with pytest.raises(ValueError, match=r"method\.penalty_backend='fast'; allowed: auto, torch, cpp"):
        key_penalty.gathered_abs_mean(A, B, **pattern.arguments(A, "fast"))
