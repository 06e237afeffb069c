"""Gated class-attention, literally as written: the pure-PyTorch reference of ``kernels.gated_class_attention``.

GCAB (Cotogni et al., arXiv 2211.12292; reference code github OcraM17/GCAB-CFDC, ``continual/convit.py``
``ClassAttention.forward``): for task token ``c`` with channel gate ``m = m0_c`` (soft ``sigmoid(s e)`` or binarised),
keys/values over ``z = [cls_c ; x]`` (the task token itself and the patch tokens, both after the block's LayerNorm)::

    q = m * (W_q (m * cls_c) + b_q)          k = m * (W_k (m * z) + b_k)          v = W_v (m * z) + b_v
    a = softmax_n(q_h . k_h,n / sqrt(d_h))   per head h (the gate acts on channels inside each head)
    o = m * (a v)                            y = m * (W_proj o + b_proj)

Only the input of ``v`` is gated (its output is gated through ``o``); the projection bias is gated by the ``m`` applied
after the projection. Returns ``y`` for every task token, shape ``(B, T, D)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gated_class_attention_reference(
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
) -> Tensor:
    """``tokens`` (B, T, D) normed task tokens; ``x`` (B, N, D) normed patch tokens shared by all task tokens, or
    (T, B, N, D) one sequence per task token; ``m0`` (T, D) gates. Returns (B, T, D)."""
    b, t, d = tokens.shape
    h, hd = num_heads, d // num_heads
    outs = []
    for c in range(t):
        xc = x if x.dim() == 3 else x[c]
        m = m0[c]
        cls = tokens[:, c]
        z = torch.cat((cls[:, None], xc), dim=1) * m  # (B, 1 + N, D)
        q = torch.nn.functional.linear(cls * m, q_weight, q_bias) * m
        k = torch.nn.functional.linear(z, k_weight, k_bias) * m
        v = torch.nn.functional.linear(z, v_weight, v_bias)
        q = q.reshape(b, 1, h, hd).transpose(1, 2) * hd**-0.5  # (B, H, 1, hd)
        k = k.reshape(b, -1, h, hd).transpose(1, 2)
        v = v.reshape(b, -1, h, hd).transpose(1, 2)
        a = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        o = (a @ v).transpose(1, 2).reshape(b, d) * m
        outs.append(torch.nn.functional.linear(o, proj_weight, proj_bias) * m)
    return torch.stack(outs, dim=1)
