"""Fused Triton kernels of GCAB's masked class-attention: the pass over the patch tokens, forward and backward.

``kernels.gated_attention`` folds the gated single query of every (task token, head) into the gated key weight
(``q~``, (B, T, H, D)), so that keys and values are the raw normed tokens ``z = [cls_t ; x]`` themselves::

    a_r = softmax_j(q~_r . z_j)          zbar_r = sum_j a_r,j z_j          r = (t, h), j = 0 (cls_t), 1..N (x)

(GCAB, Cotogni et al., arXiv 2211.12292; reference code github OcraM17/GCAB-CFDC ``continual/convit.py``). This module
computes ``zbar`` in one pass over ``x`` per sample, flash-attention style: a program owns a block of query rows of one
sample, starts its online softmax from the task token's own score (``j = 0``) and streams ``x`` in blocks of
``BLOCK_N`` tokens, so the (rows x N) scores never reach memory. With a shared ``x`` (B, N, D) all ``T x H`` rows of a
sample are one group and ``x`` is read once for all task tokens; with one sequence per task token (T, B, N, D; CFDC's
cascade at inference) each task token's ``H`` rows are a group over its own sequence.

Backward (keys and values are the same vectors, so ``z_j`` gets both gradients)::

    dP_r,j = dzbar_r . z_j     dS_r,j = a_r,j (dP_r,j - Delta_r)     Delta_r = dzbar_r . zbar_r
    dq~_r = sum_j dS_r,j z_j   dz_j = sum_r (a_r,j dzbar_r + dS_r,j q~_r)

``_bwd_rows`` recomputes ``a`` from the saved log-sum-exp per row block (``dq~`` and the task token's share), and
``_bwd_tokens`` per block of patch tokens (``dx``), so nothing of size rows x N is stored. Every product and
accumulator is float32 (``input_precision="ieee"``, no TF32); float16/bfloat16 inputs are converted on load and the
output is cast back. On CPU tensors the kernels run only under ``TRITON_INTERPRET=1`` (the tests);
``kernels.gated_class_attention(..., backend="triton")`` dispatches them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _fwd(
    q_ptr, tok_ptr, x_ptr, z_ptr, lse_ptr,
    N, D, H, RG,
    sqb, sqr, stb, stt, sxg, sxb, sxn, slb,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    g = tl.program_id(1)
    local = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = local < RG
    rows = g * RG + local
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    qmask = rmask[:, None] & dmask[None, :]
    q = tl.load(q_ptr + b * sqb + rows[:, None] * sqr + offs_d[None, :], mask=qmask, other=0.0).to(tl.float32)
    tt = rows // H
    tok = tl.load(tok_ptr + b * stb + tt[:, None] * stt + offs_d[None, :], mask=qmask, other=0.0).to(tl.float32)
    m_i = tl.sum(q * tok, axis=1)  # the task token's own score starts the online softmax
    l_i = tl.full((BLOCK_R,), 1.0, dtype=tl.float32)
    acc = tok
    x_base = x_ptr + g * sxg + b * sxb
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        xn = tl.load(x_base + offs_n[:, None] * sxn + offs_d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
        xn = xn.to(tl.float32)
        s = tl.dot(q, tl.trans(xn), input_precision="ieee")
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, xn, input_precision="ieee")
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(z_ptr + b * sqb + rows[:, None] * sqr + offs_d[None, :], acc, mask=qmask)
    tl.store(lse_ptr + b * slb + rows, m_i + tl.log(l_i), mask=rmask)


@triton.jit
def _bwd_rows(
    q_ptr, tok_ptr, x_ptr, dz_ptr, lse_ptr, delta_ptr, dq_ptr, dtok_ptr,
    N, D, H, RG,
    sqb, sqr, stb, stt, sxg, sxb, sxn, slb,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    g = tl.program_id(1)
    local = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = local < RG
    rows = g * RG + local
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    qmask = rmask[:, None] & dmask[None, :]
    roff = b * sqb + rows[:, None] * sqr + offs_d[None, :]
    q = tl.load(q_ptr + roff, mask=qmask, other=0.0).to(tl.float32)
    dz = tl.load(dz_ptr + roff, mask=qmask, other=0.0).to(tl.float32)
    tt = rows // H
    tok = tl.load(tok_ptr + b * stb + tt[:, None] * stt + offs_d[None, :], mask=qmask, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + b * slb + rows, mask=rmask, other=0.0)
    delta = tl.load(delta_ptr + b * slb + rows, mask=rmask, other=0.0)
    a0 = tl.where(rmask, tl.exp(tl.sum(q * tok, axis=1) - lse), 0.0)
    ds0 = a0 * (tl.sum(dz * tok, axis=1) - delta)
    dq = ds0[:, None] * tok
    tl.store(dtok_ptr + roff, a0[:, None] * dz + ds0[:, None] * q, mask=qmask)  # summed over heads by the caller
    x_base = x_ptr + g * sxg + b * sxb
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        xn = tl.load(x_base + offs_n[:, None] * sxn + offs_d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
        xn = xn.to(tl.float32)
        s = tl.dot(q, tl.trans(xn), input_precision="ieee")
        a = tl.where(rmask[:, None] & nmask[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(dz, tl.trans(xn), input_precision="ieee")
        dq += tl.dot(a * (dp - delta[:, None]), xn, input_precision="ieee")
    tl.store(dq_ptr + roff, dq, mask=qmask)


@triton.jit
def _bwd_tokens(
    q_ptr, x_ptr, dz_ptr, lse_ptr, delta_ptr, dx_ptr,
    N, D, RG,
    sqb, sqr, sxg, sxb, sxn, slb,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    g = tl.program_id(1)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    xoff = g * sxg + b * sxb + offs_n[:, None] * sxn + offs_d[None, :]
    xmask = nmask[:, None] & dmask[None, :]
    xn = tl.load(x_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for r0 in range(0, RG, BLOCK_R):
        local = r0 + tl.arange(0, BLOCK_R)
        rmask = local < RG
        rows = g * RG + local
        qmask = rmask[:, None] & dmask[None, :]
        roff = b * sqb + rows[:, None] * sqr + offs_d[None, :]
        q = tl.load(q_ptr + roff, mask=qmask, other=0.0).to(tl.float32)
        dz = tl.load(dz_ptr + roff, mask=qmask, other=0.0).to(tl.float32)
        lse = tl.load(lse_ptr + b * slb + rows, mask=rmask, other=0.0)
        delta = tl.load(delta_ptr + b * slb + rows, mask=rmask, other=0.0)
        s = tl.dot(q, tl.trans(xn), input_precision="ieee")
        a = tl.where(rmask[:, None] & nmask[None, :], tl.exp(s - lse[:, None]), 0.0)
        ds = a * (tl.dot(dz, tl.trans(xn), input_precision="ieee") - delta[:, None])
        acc += tl.dot(tl.trans(a), dz, input_precision="ieee") + tl.dot(tl.trans(ds), q, input_precision="ieee")
    tl.store(dx_ptr + xoff, acc, mask=xmask)


def usable(*tensors: Tensor) -> bool:
    """The kernels can run on these tensors: CUDA (or any device while ``TRITON_INTERPRET=1``), float32/16/bf16."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return all((t.is_cuda or interpret) and t.dtype in FLOATS for t in tensors)


def _blocks(d: int) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(d))
    return 16, (32 if block_d <= 256 else 16), block_d


def _layout(tokens: Tensor, x: Tensor, qt: Tensor) -> tuple[Tensor, int, int, int]:
    """``x`` as (G, B, N, D) contiguous with its group count ``G`` (1: shared), rows per group and group stride."""
    b, t, h, d = qt.shape
    if x.dim() == 3:
        return x.contiguous().unsqueeze(0), 1, t * h, 0
    x = x.contiguous()
    return x, t, h, x.stride(0)


def attend_forward(tokens: Tensor, x: Tensor, qt: Tensor) -> tuple[Tensor, Tensor]:
    """``(zbar (B, T, H, D) float32, lse (B, T*H) float32)``; see the module docstring."""
    b, t, h, d = qt.shape
    qt, tokens = qt.contiguous(), tokens.contiguous()
    xg, groups, rg, sxg = _layout(tokens, x, qt)
    n = xg.shape[2]
    zbar = torch.empty(b, t, h, d, device=qt.device, dtype=torch.float32)
    lse = torch.empty(b, t * h, device=qt.device, dtype=torch.float32)
    br, bn, bd = _blocks(d)
    _fwd[(b, groups, triton.cdiv(rg, br))](
        qt, tokens, xg, zbar, lse, n, d, h, rg,
        t * h * d, d, tokens.stride(0), tokens.stride(1), sxg, xg.stride(1), xg.stride(2), t * h,
        BLOCK_R=br, BLOCK_N=bn, BLOCK_D=bd,
    )  # fmt: skip
    return zbar, lse


def attend_backward(
    tokens: Tensor, x: Tensor, qt: Tensor, zbar: Tensor, lse: Tensor, dzbar: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(d tokens, d x, d qt)`` (float32) for the upstream gradient ``dzbar`` (B, T, H, D)."""
    b, t, h, d = qt.shape
    qt, tokens, dzbar = qt.contiguous(), tokens.contiguous(), dzbar.contiguous()
    xg, groups, rg, sxg = _layout(tokens, x, qt)
    n = xg.shape[2]
    delta = (dzbar.float() * zbar).sum(-1).reshape(b, t * h).contiguous()
    dq = torch.empty(b, t, h, d, device=qt.device, dtype=torch.float32)
    dtok_rows = torch.empty_like(dq)
    dx = torch.empty(xg.shape, device=qt.device, dtype=torch.float32)
    br, bn, bd = _blocks(d)
    _bwd_rows[(b, groups, triton.cdiv(rg, br))](
        qt, tokens, xg, dzbar, lse, delta, dq, dtok_rows, n, d, h, rg,
        t * h * d, d, tokens.stride(0), tokens.stride(1), sxg, xg.stride(1), xg.stride(2), t * h,
        BLOCK_R=br, BLOCK_N=bn, BLOCK_D=bd,
    )  # fmt: skip
    _bwd_tokens[(b, groups, triton.cdiv(n, bn))](
        qt, xg, dzbar, lse, delta, dx, n, d, rg,
        t * h * d, d, dx.stride(0), dx.stride(1), dx.stride(2), t * h,
        BLOCK_R=br, BLOCK_N=bn, BLOCK_D=bd,
    )  # fmt: skip
    dx = dx[0] if x.dim() == 3 else dx
    return dtok_rows.sum(2), dx, dq


class Attend(torch.autograd.Function):
    """``zbar`` of :func:`attend_forward` with the Triton backward; differentiable in tokens, x and q~."""

    @staticmethod
    def forward(ctx, tokens: Tensor, x: Tensor, qt: Tensor) -> Tensor:  # type: ignore[override]
        zbar, lse = attend_forward(tokens, x, qt)
        ctx.save_for_backward(tokens, x, qt, zbar, lse)
        return zbar.to(qt.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        tokens, x, qt, zbar, lse = ctx.saved_tensors
        dtok, dx, dq = attend_backward(tokens, x, qt, zbar, lse, grad)
        return dtok.to(tokens.dtype), dx.to(x.dtype), dq.to(qt.dtype)


def attend_triton(tokens: Tensor, x: Tensor, qt: Tensor) -> Tensor:
    """Drop-in for ``kernels.gated_attention.attend_torch``: ``zbar`` (B, T, H, D) through the Triton kernels."""
    return Attend.apply(tokens, x, qt)
