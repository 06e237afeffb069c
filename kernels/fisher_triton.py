"""Fused Triton kernels for the two Linear-layer Fisher rules (see ``kernels.fisher_rules``); imported lazily.

* ``seq_sqsum(g, x)``: ``out[o, k] = sum_b (sum_t g[b, t, o] x[b, t, k])^2`` for g (B, T, O), x (B, T, K).
  Each program owns one (BLOCK_O x BLOCK_K) tile of ``out``; for every sample it accumulates the tile of the per-sample
  gradient ``G_b^T X_b`` over token blocks with ``tl.dot`` in registers, squares it and adds it to the running sum --
  the per-sample gradients are never written to memory (O(O K) memory instead of O(B O K)).
* ``vec_sqsum(g, x)``: ``out[o, k] = sum_b g[b, o]^2 x[b, k]^2`` (the sum-of-squares identity for vector inputs), a
  matmul of squared operands with the squares taken on the loaded tiles (no squared copies in memory).

Both accumulate in float32 (``input_precision="ieee"``: no TF32) and add into ``out`` (new zeros if None).
On CPU tensors they run only under ``TRITON_INTERPRET=1`` (tests); ``kernels.fisher`` dispatches them for CUDA
tensors of float32/16/bfloat16 and uses the torch rules otherwise (float64, or triton missing).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.fisher_rules import seq_sqsum_torch, vec_sqsum_torch

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _seq_sqsum_kernel(
    g_ptr, x_ptr, out_ptr, B, T, N_OUT, K,
    sgb, sgt, sgo, sxb, sxt, sxk, soo, sok, SPLIT,
    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    pid_o = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_b = tl.program_id(2)  # samples pid_b, pid_b + SPLIT, ...: more programs when O x K has few tiles
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    total = tl.zeros((BLOCK_O, BLOCK_K), dtype=tl.float32)
    for b in range(pid_b, B, SPLIT):
        acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            gmask = (offs_t[:, None] < T) & (offs_o[None, :] < N_OUT)
            xmask = (offs_t[:, None] < T) & (offs_k[None, :] < K)
            gt = tl.load(g_ptr + b * sgb + offs_t[:, None] * sgt + offs_o[None, :] * sgo, mask=gmask, other=0.0)
            xt = tl.load(x_ptr + b * sxb + offs_t[:, None] * sxt + offs_k[None, :] * sxk, mask=xmask, other=0.0)
            acc += tl.dot(tl.trans(gt.to(tl.float32)), xt.to(tl.float32), input_precision="ieee")
        total += acc * acc
    omask = (offs_o[:, None] < N_OUT) & (offs_k[None, :] < K)
    tl.atomic_add(out_ptr + offs_o[:, None] * soo + offs_k[None, :] * sok, total, mask=omask)


@triton.jit
def _vec_sqsum_kernel(
    g_ptr, x_ptr, out_ptr, B, N_OUT, K,
    sgb, sgo, sxb, sxk, soo, sok,
    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    pid_o = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        gmask = (offs_b[:, None] < B) & (offs_o[None, :] < N_OUT)
        xmask = (offs_b[:, None] < B) & (offs_k[None, :] < K)
        gb = tl.load(g_ptr + offs_b[:, None] * sgb + offs_o[None, :] * sgo, mask=gmask, other=0.0).to(tl.float32)
        xb = tl.load(x_ptr + offs_b[:, None] * sxb + offs_k[None, :] * sxk, mask=xmask, other=0.0).to(tl.float32)
        acc += tl.dot(tl.trans(gb * gb), xb * xb, input_precision="ieee")
    omask = (offs_o[:, None] < N_OUT) & (offs_k[None, :] < K)
    optrs = out_ptr + offs_o[:, None] * soo + offs_k[None, :] * sok
    tl.store(optrs, tl.load(optrs, mask=omask, other=0.0) + acc, mask=omask)


def _usable(*ts: Tensor) -> bool:
    """Triton path: CUDA float tensors (or any tensors while TRITON_INTERPRET=1, for tests)."""
    import os

    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return all(t.dtype in _FLOATS and (t.is_cuda or interpret) for t in ts)


def seq_sqsum(
    g: Tensor, x: Tensor, chunk: int | None = None, out: Tensor | None = None, block: int = 32, split: int | None = None
) -> Tensor:
    """Fused ``sum_b (g_b^T x_b)^2`` -> (O, K) float32; falls back to the torch rule where Triton cannot run.
    ``split``: programs per output tile over the samples (default: about 1024 programs in all)."""
    if not _usable(g, x):
        return seq_sqsum_torch(g, x, chunk, out)
    b, t, o = g.shape
    k = x.shape[2]
    if out is not None and out.dtype != torch.float32:
        return out.add_(seq_sqsum(g, x, chunk, None, block, split).to(out.dtype))
    out = torch.zeros(o, k, dtype=torch.float32, device=g.device) if out is None else out
    tiles = triton.cdiv(o, block) * triton.cdiv(k, block)
    split = max(1, min(b, split if split is not None else 1024 // tiles))
    grid = (triton.cdiv(o, block), triton.cdiv(k, block), split)
    _seq_sqsum_kernel[grid](
        g, x, out, b, t, o, k, *g.stride(), *x.stride(), *out.stride(), split, BLOCK_O=block, BLOCK_K=block, BLOCK_T=16
    )
    return out


def vec_sqsum(g: Tensor, x: Tensor, chunk: int | None = None, out: Tensor | None = None, block: int = 32) -> Tensor:
    """Fused ``(g * g)^T (x * x)`` -> (N_OUT, K) float32; falls back to the torch rule where Triton cannot run."""
    if not _usable(g, x):
        return vec_sqsum_torch(g, x, chunk, out)
    b, o = g.shape
    k = x.shape[1]
    if out is not None and out.dtype != torch.float32:
        return out.add_(vec_sqsum(g, x, chunk, None, block).to(out.dtype))
    out = torch.zeros(o, k, dtype=torch.float32, device=g.device) if out is None else out
    grid = (triton.cdiv(o, block), triton.cdiv(k, block))
    _vec_sqsum_kernel[grid](
        g, x, out, b, o, k, *g.stride(), *x.stride(), *out.stride(), BLOCK_O=block, BLOCK_K=block, BLOCK_B=16
    )
    return out
