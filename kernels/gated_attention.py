"""Fused masked class-attention of GCAB for all task tokens in one call: ``kernels.gated_class_attention``.

Computes exactly the gated class-attention of :mod:`kernels.gated_attention_reference` (GCAB, arXiv 2211.12292;
reference code github OcraM17/GCAB-CFDC ``continual/convit.py``), organised around two facts:

1. *One query per head.* ``q_h . k_h,n = q~_h . z_n`` with ``q~_h = m * (W_k,h^T (m_h * q_h))``: the query is folded
   into the key weight, so the scores are one (T*H x D) by (D x N) product against the raw patch tokens and the
   (N x D x D) key GEMM is never formed (the key bias is constant over keys and drops out of the softmax). Likewise
   ``a v`` = ``W_v (m * (sum_n a_n z_n)) + b_v``: the attention-weighted token mean ``zbar_h`` (H x D per token) goes
   through the value weight once, so the (N x D x D) value GEMM is not formed either. A task token costs
   ``O(D^2 + N D H)`` instead of ``O(N D^2)``.
2. *Every task token attends to the same patch tokens.* With a shared ``x`` (B, N, D) the scores of all T task tokens
   come from one pass over ``x``; only the task token's own key/value row differs per token.

The gates act only through elementwise products with the weights' rows/columns, so soft and binarised masks take the
same path; with binarised masks the units outside a mask contribute exact zeros.

Backends (``backend=``, in GCAB ``method.kernel_backend``): ``reference`` (the literal formula), ``torch`` (the folded
form above, autograd), ``triton`` (the folded form with the pass over the tokens -- scores, online softmax, weighted
mean, and their backward -- fused in :mod:`kernels.gated_attention_triton`; CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1`` for tests), ``auto`` (``torch`` on every device: on an H200 the torch form was faster than
the Triton kernel at inference on all three shapes measured and level in training, experiments/bench/README.md, "On a
GPU"; select ``triton`` explicitly). The query fold and the value/projection GEMMs stay in torch in every backend
(``O(D^2)`` per task token). Speed: ``experiments/bench/gated_attention.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.gated_attention_reference import gated_class_attention_reference

BACKENDS = ("auto", "reference", "torch", "triton")


def _check(tokens: Tensor, x: Tensor, m0: Tensor, q_weight: Tensor, num_heads: int, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"gated_class_attention: backend={backend!r} is not one of {list(BACKENDS)}")
    if tokens.dim() != 3:
        raise ValueError(f"gated_class_attention: tokens must be (B, T, D); got {tuple(tokens.shape)}")
    b, t, d = tokens.shape
    if x.dim() == 3:
        ok = x.shape[0] == b and x.shape[2] == d
    elif x.dim() == 4:
        ok = x.shape[0] == t and x.shape[1] == b and x.shape[3] == d
    else:
        ok = False
    if not ok:
        raise ValueError(f"gated_class_attention: x must be (B, N, D) or (T, B, N, D); got {tuple(x.shape)}")
    if m0.shape != (t, d):
        raise ValueError(f"gated_class_attention: m0 must be (T, D) = {(t, d)}; got {tuple(m0.shape)}")
    if q_weight.shape != (d, d) or d % num_heads:
        raise ValueError(f"gated_class_attention: weights must be (D, D) with D divisible by num_heads={num_heads}")


def fold_query(tokens: Tensor, m0: Tensor, q_weight: Tensor, k_weight: Tensor, num_heads: int, q_bias=None) -> Tensor:
    """``q~`` (B, T, H, D): the gated, scaled query of every head folded into the gated key weight."""
    b, t, d = tokens.shape
    hd = d // num_heads
    q = F.linear(tokens * m0, q_weight, q_bias) * (m0 * m0 * hd**-0.5)  # q gated, then the key's output gate
    qt = torch.einsum("bthj,hjd->bthd", q.reshape(b, t, num_heads, hd), k_weight.reshape(num_heads, hd, d))
    return qt * m0[None, :, None, :]  # the key's input gate


def value_out(
    zbar: Tensor, m0: Tensor, v_weight: Tensor, proj_weight: Tensor, proj_bias: Tensor | None, v_bias: Tensor | None
) -> Tensor:
    """From the attention-weighted token means ``zbar`` (B, T, H, D) to the block's attention output (B, T, D)."""
    b, t, h, d = zbar.shape
    o = torch.einsum("bthd,hjd->bthj", zbar * m0[None, :, None, :], v_weight.reshape(h, d // h, d))
    o = o.reshape(b, t, d)
    if v_bias is not None:
        o = o + v_bias
    return F.linear(o * m0, proj_weight, proj_bias) * m0


def attend_torch(tokens: Tensor, x: Tensor, qt: Tensor) -> Tensor:
    """``zbar`` (B, T, H, D): softmax over [the task token ; the patch tokens] of ``q~ . z``, weighted mean of ``z``."""
    s_cls = (qt * tokens[:, :, None, :]).sum(-1, keepdim=True)  # (B, T, H, 1)
    if x.dim() == 3:
        s_x = torch.einsum("bthd,bnd->bthn", qt, x)
    else:
        s_x = torch.einsum("bthd,tbnd->bthn", qt, x)
    a = torch.cat((s_cls, s_x), dim=-1).softmax(dim=-1)
    if x.dim() == 3:
        zbar = torch.einsum("bthn,bnd->bthd", a[..., 1:], x)
    else:
        zbar = torch.einsum("bthn,tbnd->bthd", a[..., 1:], x)
    return zbar + a[..., :1] * tokens[:, :, None, :]


def triton_available() -> bool:
    """Triton is importable (the ``triton`` backend needs it)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _attend(backend: str, tokens: Tensor, x: Tensor, qt: Tensor) -> Tensor:
    if backend in ("torch", "auto"):
        return attend_torch(tokens, x, qt)
    if not triton_available():
        raise ValueError("gated_class_attention: backend='triton' needs the triton package (pip install triton)")
    from kernels import gated_attention_triton as gt

    if not gt.usable(tokens, x, qt):
        raise ValueError(
            "gated_class_attention: backend='triton' needs CUDA tensors of float32/float16/bfloat16 (CPU tensors only "
            f"under TRITON_INTERPRET=1); got {x.device} {x.dtype}. Use backend='auto' or 'torch'"
        )
    return gt.attend_triton(tokens, x, qt)


def gated_class_attention(
    tokens: Tensor,
    x: Tensor,
    m0: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    v_weight: Tensor,
    proj_weight: Tensor,
    proj_bias: Tensor | None,
    num_heads: int,
    q_bias: Tensor | None = None,
    k_bias: Tensor | None = None,
    v_bias: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Gated class-attention output ``m * (W_proj (m * a v) + b_proj)`` for every task token, (B, T, D).

    ``tokens`` (B, T, D): the task tokens after the block's LayerNorm; ``x``: the patch tokens after the same norm,
    (B, N, D) shared by all task tokens or (T, B, N, D) one sequence per task token (CFDC's cascade at inference);
    ``m0`` (T, D): each task token's channel gate. Weights as ``nn.Linear`` (out, in). Differentiable in every input.
    """
    _check(tokens, x, m0, q_weight, num_heads, backend)
    if backend == "reference":
        return gated_class_attention_reference(
            tokens, x, m0, q_weight, k_weight, v_weight, proj_weight, proj_bias, num_heads, q_bias, k_bias, v_bias
        )
    del k_bias  # constant over the keys of a query: no effect on the softmax, hence none on the output
    qt = fold_query(tokens, m0, q_weight, k_weight, num_heads, q_bias)
    zbar = _attend(backend, tokens, x, qt)
    return value_out(zbar, m0, v_weight, proj_weight, proj_bias, v_bias)
