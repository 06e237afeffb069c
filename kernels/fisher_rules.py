"""Exact per-layer rules for the diagonal of the empirical Fisher from captured activations and output gradients.

Notation: for sample i, ``x_i`` is a layer's input and ``g_i = d l_i / d y_i`` the gradient of that sample's loss
``l_i = -log p(y_i | x_i)`` with respect to the layer's output (obtained for all samples at once by back-propagating
``sum_i l_i``: in eval mode sample i's loss depends only on sample i's activations). Every rule returns
``sum_i (d l_i / d theta)^2`` for each parameter; the caller divides by N.

* Linear on vectors, ``y = W x + b``: ``dl_i/dW = g_i x_i^T``, so ``(dl_i/dW)^2 = (g_i * g_i)(x_i * x_i)^T`` and
  ``sum_i (dl_i/dW)^2 = (G * G)^T (X * X)`` -- one matmul of squared activations, no per-sample gradient
  (the "sum-of-squares identity"); bias: ``sum_i g_i^2``.
* Linear on token sequences ``x_i in R^{T x d}``: ``dl_i/dW = sum_t g_it x_it^T = G_i^T X_i``; formed for a chunk of
  samples with one bmm and squared (or fused in Triton, see ``kernels.fisher_triton``); bias ``(sum_t g_it)^2``.
  A layer called several times in one forward is the same with the calls concatenated along t.
* Conv2d: ``y = W * x`` is a Linear on the unfolded patches ``U_i = unfold(x_i) in R^{C k_h k_w x L}``:
  ``dl_i/dW = G_i U_i^T`` (per group), ``G_i in R^{C_out x L}``; bias ``(sum_l g_il)^2``.
* LayerNorm / RMSNorm / GroupNorm / BatchNorm in eval mode: ``y = xhat * w + b`` with ``xhat`` recomputed from the
  captured input (BatchNorm uses its running statistics, so samples are independent):
  ``dl_i/dw = sum_t g_it * xhat_it`` (summed over tokens / spatial positions), ``dl_i/db = sum_t g_it``.
* Embedding: ``dl_i/dE[r] = sum_{t: idx_it = r} g_it``: gradients are summed per (sample, row) with a scatter over the
  unique (sample, row) pairs, squared, then scattered into the row table (``padding_idx`` rows get zero).

Every rule takes lists of inputs and output gradients (one entry per call of the module in the forward) and adds
into ``acc`` (local parameter name -> accumulator); it returns False, before adding anything, when it cannot treat the
call pattern (the caller then falls back to the torch.func reference).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_BUDGET = 1 << 22  # elements of per-sample temporaries allowed at once when `chunk` is not given

SqSum = Callable[[Tensor, Tensor, int | None, Tensor | None], Tensor]  # (g, x, chunk, out) -> out


class SqOps(NamedTuple):
    """What every rule gets besides the captures: the two squared-product kernels (torch or Triton) and ``chunk``."""

    seq: SqSum
    vec: SqSum
    chunk: int | None = None
    fused: Any = None  # kernels.fisher_cpp on CPU when its kernels built (fused Linear-on-sequences and norm rules)


def chunk_size(batch: int, per_sample: int, chunk: int | None) -> int:
    """Samples per block: the caller's ``chunk`` or as many as fit in ``DEFAULT_BUDGET`` elements."""
    if chunk is not None:
        return max(1, min(batch, chunk))
    return max(1, min(batch, DEFAULT_BUDGET // max(1, per_sample)))


GROUPED_MIN_POSITIONS = 256  # conv outputs with this many positions use the grouped-convolution form on CPU
SEQ_BLOCK = 1 << 18  # CPU: elements of per-sample products formed at once (1 MiB float32, stays in L2 to be squared)
SUM_MIN_SAMPLES = 8  # fewer per-sample products in a block: added by addcmul one by one, not squared and summed over
# the block (sum over a leading dim of 1-4 ran 2-5x slower than the addcmul loop, e.g. 70 vs 29 us for 2 x 110592; from
# 16 samples up the reduction wins: experiments/bench/README.md, fisher family)

_SCRATCH = threading.local()


def scratch(numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A flat buffer of ``numel`` elements, reused by every rule of the calling thread (no allocation per layer and
    batch: with glibc's mmap threshold at 64 KiB a fresh 3 MiB buffer page-faulted on every rule, 20x the product).
    ``release_scratch`` frees it (``kernels.fisher.fisher_diagonal`` does at the end of each call)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
        buf = _SCRATCH.buf = None  # drop the old one before allocating its successor
        buf = _SCRATCH.buf = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def release_scratch() -> None:
    _SCRATCH.buf = None


def seq_sqsum_torch(g: Tensor, x: Tensor, chunk: int | None, out: Tensor | None = None) -> Tensor:
    """``sum_b (g_b^T x_b)^2`` for g (B, T, O), x (B, T, K) -> (O, K), never materialising all per-sample gradients.

    On CPU the per-sample products are formed ``SEQ_BLOCK`` elements at a time into the thread's reused ``scratch``
    buffer and squared and summed while still in cache: ``c = SEQ_BLOCK / (O K)`` samples per bmm when ``O x K`` is
    small (or ``chunk`` samples when given), else per sample and per block of output rows (mm, then addcmul). Short
    sequences make this product write-bound (T multiply-adds per element written), hence the cache blocking:
    measured 1.1-1.9x the training weight-gradient GEMM for T = 17-257 (it was 2.5-30x with a fresh buffer per call).
    On several intra-op threads (the fast backend runs rules on one; this is for direct callers) and off CPU: one bmm
    per ``chunk_size`` block of samples (few large ops: with many small ones, each an OpenMP region, threads wait on
    each other whenever a core is busy elsewhere -- measured 6x slower on the shared 2-core machine). Adds into
    ``out`` when given.
    """
    b, _, o = g.shape
    k = x.shape[2]
    if out is not None and out.dtype != g.dtype:
        return out.add_(seq_sqsum_torch(g, x, chunk).to(out.dtype))
    if out is None:
        out = torch.zeros(o, k, dtype=g.dtype, device=g.device)
    per = o * k
    cpu = g.device.type == "cpu"
    few_ops = not cpu or torch.get_num_threads() > 1  # several intra-op threads: few large ops (see below)
    if few_ops or per <= SEQ_BLOCK or chunk is not None:
        if few_ops:
            c = chunk_size(b, per, chunk)
        else:
            c = max(1, min(b, chunk if chunk is not None else SEQ_BLOCK // per))
        buf = (
            scratch(c * per + per, g.dtype, g.device)
            if cpu
            else torch.empty(c * per + per, dtype=g.dtype, device=g.device)
        )
        total = buf[c * per :].view(o, k)
        gt = g.transpose(1, 2)
        for s in range(0, b, c):
            n = min(c, b - s)
            p = buf[: n * per].view(n, o, k)
            torch.bmm(gt[s : s + n], x[s : s + n], out=p)
            if n < SUM_MIN_SAMPLES:  # a reduction over a short leading dim is slow: one fused pass per sample
                for i in range(n):
                    out.addcmul_(p[i], p[i])
            else:
                torch.sum(p.square_(), 0, out=total)
                out.add_(total)
        return out
    ob = max(1, min(o, SEQ_BLOCK // k))
    buf = scratch(ob * k, g.dtype, g.device)
    for i in range(b):
        gi, xi = g[i].t(), x[i]
        for s in range(0, o, ob):
            p = buf[: min(ob, o - s) * k].view(-1, k)
            torch.mm(gi[s : s + ob], xi, out=p)
            out[s : s + ob].addcmul_(p, p)
    return out


def vec_sqsum_torch(g: Tensor, x: Tensor, chunk: int | None = None, out: Tensor | None = None) -> Tensor:
    """``sum_b (g_b * g_b)(x_b * x_b)^T`` for g (B, O), x (B, K) -> (O, K); adds into ``out`` when given."""
    if out is None:
        return g.square().t() @ x.square()
    if out.dtype != g.dtype:
        return out.add_((g.square().t() @ x.square()).to(out.dtype))
    return out.addmm_(g.square().t(), x.square())


def _add(acc: dict[str, Tensor], key: str, value: Tensor) -> None:
    target = acc[key]
    if value.shape != target.shape:
        value = value.reshape(target.shape)
    target.add_(value if value.dtype == target.dtype else value.to(target.dtype))


def _tokens(ts: list[Tensor], feat_dims: int) -> Tensor | None:
    """Concatenate calls as (B, T, *feat) with every leading non-batch dim flattened into T."""
    if len({t.shape[0] for t in ts}) != 1 or len({t.shape[t.dim() - feat_dims :] for t in ts}) != 1:
        return False
    b = ts[0].shape[0]
    feats = ts[0].shape[ts[0].dim() - feat_dims :]
    parts = [t.reshape(b, -1, *feats) for t in ts]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def linear_rule(mod: nn.Linear, xs: list[Tensor], gs: list[Tensor], acc: dict[str, Tensor], ops: SqOps) -> bool:
    if len(xs) == 1 and xs[0].dim() == 2:
        x, g = xs[0], gs[0]
        if "weight" in acc:
            ops.vec(g, x, ops.chunk, acc["weight"])
        if "bias" in acc:
            _add(acc, "bias", g.square().sum(0))
        return True
    x, g = _tokens(xs, 1), _tokens(gs, 1)
    if x is None or g is None:
        return False
    if ops.fused is not None and ops.fused.linear(g, x, acc.get("weight"), acc.get("bias")):
        return True
    if "weight" in acc:
        ops.seq(g, x, ops.chunk, acc["weight"])
    if "bias" in acc:
        _add(acc, "bias", g.sum(1).square().sum(0))
    return True


def conv_padding(mod: nn.Conv2d, x: Tensor) -> Tensor:
    """Pad explicitly (any padding_mode, 'same'/'valid'), so that unfold runs with padding 0."""
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            return x
        pads: list[int] = []
        for d, k in zip(reversed(mod.dilation), reversed(mod.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for p in reversed(mod.padding) for _ in range(2)]
    if not any(pads):
        return x
    mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
    return F.pad(x, pads, mode=mode)


def conv2d_rule(mod: nn.Conv2d, xs: list[Tensor], gs: list[Tensor], acc: dict[str, Tensor], ops: SqOps) -> bool:
    if any(x.dim() != 4 for x in xs) or len({x.shape[0] for x in xs}) != 1:
        return False
    if ops.fused is not None and ops.fused.conv(mod, xs, gs, acc.get("weight"), acc.get("bias")):
        return True
    b = xs[0].shape[0]
    flat = [g.reshape(b, g.shape[1], -1) for g in gs]
    grads = flat[0] if len(flat) == 1 else torch.cat(flat, dim=2)  # (B, C_out, L)
    if "bias" in acc:
        _add(acc, "bias", grads.sum(2).square().sum(0))
    if "weight" not in acc:
        return True
    groups, c_out = mod.groups, mod.out_channels
    k = mod.weight[0].numel()  # (C_in / groups) * kh * kw
    l_total = grads.shape[2]
    if l_total >= GROUPED_MIN_POSITIONS and grads.device.type == "cpu":
        _conv_weight_grouped(mod, xs, gs, ops.chunk, acc["weight"])
        return True
    w_acc = acc["weight"].view(c_out, k)
    c = chunk_size(b, k * l_total * groups, ops.chunk)
    for s in range(0, b, c):
        cols_list = [
            F.unfold(conv_padding(mod, x[s : s + c]), mod.kernel_size, mod.dilation, 0, mod.stride) for x in xs
        ]
        cols = cols_list[0] if len(cols_list) == 1 else torch.cat(cols_list, dim=2)  # (c, C_in kh kw, L)
        gc = grads[s : s + c]
        if groups == 1:
            ops.seq(gc.transpose(1, 2), cols.transpose(1, 2), None, w_acc)
        else:
            n = gc.shape[0]
            cg = cols.reshape(n, groups, k, l_total)
            gg = gc.reshape(n, groups, c_out // groups, l_total)
            w_acc.add_(torch.einsum("bgol,bgkl->bgok", gg, cg).square_().sum(0).reshape(c_out, k).to(w_acc.dtype))
    return True


def _conv_weight_grouped(mod: nn.Conv2d, xs: list[Tensor], gs: list[Tensor], chunk: int | None, acc: Tensor) -> None:
    """Per-sample conv weight gradients for a chunk of c samples as ONE convolution weight-gradient with the samples
    stacked as c * groups groups (the backend's own conv kernels, no explicit unfold); squared and summed."""
    b, c_out = xs[0].shape[0], mod.out_channels
    wshape = mod.weight.shape
    c = chunk_size(b, mod.weight.numel(), chunk)
    for s in range(0, b, c):
        total = None
        for x, g in zip(xs, gs):
            xp = conv_padding(mod, x[s : s + c])
            n = xp.shape[0]
            w = torch.empty((n * c_out, *wshape[1:]), dtype=g.dtype, device=g.device)
            gw = torch.ops.aten.convolution_backward(
                g[s : s + c].reshape(1, n * c_out, *g.shape[2:]),
                xp.reshape(1, -1, *xp.shape[2:]),
                w,
                None,
                list(mod.stride),
                [0, 0],
                list(mod.dilation),
                False,
                [0, 0],
                n * mod.groups,
                [False, True, False],
            )[1].reshape(n, *wshape)
            total = gw if total is None else total + gw
        acc.add_(total.square_().sum(0).to(acc.dtype))


def _affine_rule(xhat: Tensor, g: Tensor, acc: dict[str, Tensor]) -> bool:
    """xhat and g shaped (B, T, *shape): per-sample sums over T, squared, summed over B."""
    if "weight" in acc:
        _add(acc, "weight", (g * xhat).sum(1).square().sum(0))
    if "bias" in acc:
        _add(acc, "bias", g.sum(1).square().sum(0))
    return True


def layernorm_rule(mod: nn.Module, xs: list[Tensor], gs: list[Tensor], acc: dict[str, Tensor], ops: SqOps) -> bool:
    shape = tuple(mod.normalized_shape)
    rms = isinstance(mod, nn.RMSNorm)
    eps = (mod.eps if mod.eps is not None else torch.finfo(xs[0].dtype).eps) if rms else mod.eps
    if ops.fused is not None and len(xs) == 1 and len(shape) == 1:
        if ops.fused.norm(xs[0], gs[0], acc.get("weight"), acc.get("bias"), eps, rms):
            return True
    # unit weight and zero bias (exact: x * 1 + 0) select the vectorised CPU kernel the forward uses; without them
    # layer_norm took 2-2.5x as long (measured on (64, 17, 64) to (64, 65, 384) inputs)
    one = torch.ones(shape, dtype=xs[0].dtype, device=xs[0].device)
    if rms:
        xhats = [F.rms_norm(x, shape, one, eps) for x in xs]
    else:
        zero = torch.zeros(shape, dtype=xs[0].dtype, device=xs[0].device)
        xhats = [F.layer_norm(x, shape, one, zero, mod.eps) for x in xs]
    xhat, g = _tokens(xhats, len(shape)), _tokens(gs, len(shape))
    if xhat is None or g is None:
        return False
    return _affine_rule(xhat, g, acc)


def _channels_last_tokens(ts: list[Tensor]) -> Tensor | None:
    """(B, C, *spatial) calls -> (B, T, C)."""
    if len({(t.shape[0], t.shape[1]) for t in ts}) != 1:
        return False
    return torch.cat([t.reshape(t.shape[0], t.shape[1], -1) for t in ts], dim=2).transpose(1, 2)


def _spatial_sum(t: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B, C)."""
    return t.reshape(t.shape[0], t.shape[1], -1).sum(2)


def batchnorm_rule(mod: nn.Module, xs: list[Tensor], gs: list[Tensor], acc: dict[str, Tensor], ops: SqOps) -> bool:
    """``dl_i/dw_c = inv_c sum_s g_ics (x_ics - mean_c)``, ``dl_i/db_c = sum_s g_ics``: per-channel reductions in the
    layer's own (B, C, *spatial) layout (one temporary, no transposed copy), summed over calls, squared; one call on
    CPU: the fused C++ pass (``kernels.fisher_cpp.batchnorm``, no temporary)."""
    if mod.training or mod.running_mean is None or mod.running_var is None:
        return False  # batch statistics couple the samples: no per-sample rule
    if len({(t.shape[0], t.shape[1]) for t in xs + gs}) != 1:
        return False
    c = mod.num_features
    view = (1, c) + (1,) * (xs[0].dim() - 2)
    inv = torch.rsqrt(mod.running_var.to(xs[0].dtype) + mod.eps)
    mean = mod.running_mean.to(xs[0].dtype)
    if ops.fused is not None and ops.fused.batchnorm(xs, gs, mean, inv, acc.get("weight"), acc.get("bias")):
        return True
    mean = mean.reshape(view)
    if "weight" in acc:
        w = sum(_spatial_sum((x - mean).mul_(g)) for x, g in zip(xs, gs)) * inv
        _add(acc, "weight", w.square().sum(0))
    if "bias" in acc:
        _add(acc, "bias", sum(_spatial_sum(g) for g in gs).square().sum(0))
    return True


def groupnorm_rule(mod: nn.GroupNorm, xs: list[Tensor], gs: list[Tensor], acc: dict[str, Tensor], _ops: SqOps) -> bool:
    xhat = _channels_last_tokens([F.group_norm(x, mod.num_groups, None, None, mod.eps) for x in xs])
    g = _channels_last_tokens(gs)
    if xhat is None or g is None:
        return False
    return _affine_rule(xhat, g, acc)


def embedding_rule(mod: nn.Embedding, xs: list[Tensor], gs: list[Tensor], acc: dict[str, Tensor], _ops: SqOps) -> bool:
    if mod.scale_grad_by_freq or "weight" not in acc or len({x.shape[0] for x in xs}) != 1:
        return False
    b, n_rows, dim = xs[0].shape[0], mod.num_embeddings, mod.embedding_dim
    idx = torch.cat([x.reshape(b, -1) for x in xs], dim=1)
    g = torch.cat([t.reshape(b, -1, dim) for t in gs], dim=1).reshape(-1, dim)
    keys = (torch.arange(b, device=idx.device).unsqueeze(1) * n_rows + idx).reshape(-1)
    if mod.padding_idx is not None:
        keep = idx.reshape(-1) != mod.padding_idx
        keys, g = keys[keep], g[keep]
    uniq, inv = torch.unique(keys, return_inverse=True)
    per_pair = torch.zeros(uniq.numel(), dim, dtype=g.dtype, device=g.device).index_add_(0, inv, g)
    acc["weight"].index_add_(0, uniq % n_rows, per_pair.square_().to(acc["weight"].dtype))
    return True


_TIMM_LAYERNORM = {"timm.layers.norm.LayerNorm"}


def rule_for(mod: nn.Module) -> Callable[..., bool] | None:
    """The exact rule for a module whose forward is the plain torch one, else None (reference fallback)."""
    t = type(mod)
    name = f"{t.__module__}.{t.__qualname__}"
    table: list[tuple[type[nn.Module], Callable[..., bool]]] = [
        (nn.Linear, linear_rule),
        (nn.Conv2d, conv2d_rule),
        (nn.LayerNorm, layernorm_rule),
        (nn.RMSNorm, layernorm_rule),
        (nn.GroupNorm, groupnorm_rule),
        (nn.modules.batchnorm._BatchNorm, batchnorm_rule),
        (nn.Embedding, embedding_rule),
    ]
    for base, rule in table:
        if isinstance(mod, base) and (t.forward is base.forward or name in _TIMM_LAYERNORM):
            return rule
    return None


__all__ = [
    "DEFAULT_BUDGET",
    "SqOps",
    "chunk_size",
    "conv_padding",
    "release_scratch",
    "rule_for",
    "scratch",
    "seq_sqsum_torch",
    "vec_sqsum_torch",
]
