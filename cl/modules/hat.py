"""Hard attention to the task (HAT; Serra et al., ICML 2018, arXiv 1801.01423) as GCAB uses it on its class-attention
block (Cotogni et al., arXiv 2211.12292; reference code github OcraM17/GCAB-CFDC, ``main.py`` and
``continual/scaler.py``).

* gate ``m = sigmoid(s e)`` of a learnable embedding ``e``; ``s`` is annealed over the batches of an epoch,
  ``s = 1/smax + (smax - 1/smax) b / B`` (:func:`anneal_s`; ``b`` runs to ``B - 1`` as in the reference, so training
  never reaches ``smax``), and evaluation uses ``s = smax``;
* binarised gate of an earlier task: ``1[sigmoid(s e) > 0.5]`` (:func:`binarise`);
* the embedding-gradient compensation of HAT (``scaler.py``, ``pre_step``)::

      grad_e <- grad_e * smax / s * (cosh(clamp(s e, -c, c)) + 1) / (cosh(e) + 1),   c = thres_cosh = 50

  applied here inside the gate's backward in a numerically stable closed form (:class:`CompensatedGate`). Since
  ``d sigmoid(u)/du = 1 / (2 (cosh u + 1))`` with ``u = s e``, the compensated derivative of the gate is::

      dm/de = smax / (2 (cosh e + 1)) * (cosh(clamp(u)) + 1) / (cosh u + 1)
            = smax / 4 * exp(-2 lc(e / 2)) * exp(2 (lc(min(|u|, c) / 2) - lc(|u| / 2))),  lc(z) = log cosh z

  The reference multiplies autograd's ``s sigmoid(u)(1 - sigmoid(u))`` by the factor: in float32 ``sigmoid(u)``
  rounds towards 1 once ``|u| >~ 10`` (relative error ~1e-3 at 10, all of it by ~17), so that product loses the
  gradient exactly where the factor is largest; the closed form has no cancellation;
* the mask regulariser ``lambda * sum_i m_i (1 - p_i) / sum_i (1 - p_i)`` over the current masks ``m`` and the union
  ``p`` of earlier binarised masks, one ratio over all masks together (:func:`mask_regulariser`; the reference divides
  by zero when ``p`` is all ones -- the term is 0 then);
* the gradient mask of a weight connecting input unit ``j`` to output unit ``i``: ``1 - p_out(i) p_in(j)``
  (:func:`reserved_pairs`), so units reserved by earlier tasks are frozen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def anneal_s(batch_idx: int, num_batches: int, smax: float) -> float:
    """HAT's per-batch scale: ``1/smax + (smax - 1/smax) * batch_idx / num_batches``."""
    return 1.0 / smax + (smax - 1.0 / smax) * batch_idx / max(int(num_batches), 1)


def binarise(e: Tensor, s: float) -> Tensor:
    """``1[sigmoid(s e) > 0.5]`` as floats (no gradient), the gate of an earlier task."""
    with torch.no_grad():
        return (torch.sigmoid(s * e) > 0.5).to(e.dtype)


def _logcosh(z: Tensor) -> Tensor:
    z = z.abs()
    return z + torch.log1p(torch.exp(-2.0 * z)) - math.log(2.0)


def compensated_derivative(e: Tensor, s: float, smax: float, thres_cosh: float) -> Tensor:
    """``d sigmoid(s e) / de`` times HAT's compensation factor, in the stable closed form of the module docstring."""
    u = (s * e).abs()
    ratio = torch.exp(2.0 * (_logcosh(u.clamp(max=thres_cosh) / 2) - _logcosh(u / 2)))
    return (smax / 4.0) * torch.exp(-2.0 * _logcosh(e / 2)) * ratio


class CompensatedGate(torch.autograd.Function):
    """``sigmoid(s e)`` whose backward returns HAT's compensated embedding gradient."""

    @staticmethod
    def forward(ctx, e: Tensor, s: float, smax: float, thres_cosh: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(e)
        ctx.consts = (s, smax, thres_cosh)
        return torch.sigmoid(s * e)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (e,) = ctx.saved_tensors
        s, smax, thres_cosh = ctx.consts
        return grad * compensated_derivative(e, s, smax, thres_cosh).to(grad.dtype), None, None, None


def gate(e: Tensor, s: float, smax: float, thres_cosh: float, compensate: bool = True) -> Tensor:
    """The soft gate ``sigmoid(s e)``; with ``compensate`` its gradient is HAT's compensated one."""
    if compensate:
        return CompensatedGate.apply(e, float(s), float(smax), float(thres_cosh))
    return torch.sigmoid(s * e)


def mask_regulariser(masks: Sequence[Tensor], previous: Sequence[Tensor] | None) -> Tensor:
    """``sum m (1 - p) / sum (1 - p)`` over all masks together (``mean(m)`` over all when there is no ``p``);
    0 when earlier tasks reserved every unit."""
    if previous is None:
        return sum(m.sum() for m in masks) / sum(m.numel() for m in masks)
    num = sum((m * (1 - p)).sum() for m, p in zip(masks, previous, strict=True))
    den = sum((1 - p).sum() for p in previous)
    return num / den if float(den) > 0 else num * 0.0


def reserved_pairs(p_out: Tensor, p_in: Tensor | None = None) -> Tensor:
    """Boolean mask of the entries of a weight (out, in) -- or a bias (out,) when ``p_in`` is None -- that connect
    units reserved by earlier tasks: ``p_out(i) p_in(j) > 0``."""
    if p_in is None:
        return p_out > 0
    return (p_out[:, None] * p_in[None, :]) > 0
