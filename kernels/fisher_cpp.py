"""Fused C++ CPU passes of the Fisher's Linear-on-sequences and LayerNorm / RMSNorm rules (``csrc/fisher_rules.cpp``).

``kernels.fisher_rules.seq_sqsum_torch`` forms each sample's ``O x K`` product with a bmm and squares it in a second
pass; with short sequences (T = 17 tokens: 17 multiply-adds per element written) that product is write-bound and ran
at about 2x the training pass's weight-gradient GEMM. The C++ kernel keeps an output block in L1 and register tiles of
the per-sample products, squares them where they are formed, and writes each output element once per sample into L1
(measured in ``experiments/bench/README.md``, Fisher family); the bias term ``sum_b (sum_t g_bt)^2`` is added in the
same call. The norm rule (``norm``) recomputes ``xhat`` per token and accumulates ``sum_t g * xhat`` and ``sum_t g`` per
sample without the three ``(B, T, C)`` temporaries of the torch form (each a fresh allocation, page-faulted where
glibc maps large blocks: the torch rule measured 3-15x the layer's own forward). Exact: the same sums, accumulated in
the tensors' dtype (float32 or float64; norm statistics in float64) in a different order.

The kernel is compiled on first use with ``torch.utils.cpp_extension`` (a C++ compiler and ninja; built into
``.build/torch_extensions`` beside the package, as ``kernels.key_penalty`` does); when it does not build, one warning
is given and ``seq_sqsum`` is ``kernels.fisher_rules.seq_sqsum_torch``. Tensors it does not take (not CPU, not
float32/float64, mixed dtypes, a non-contiguous accumulator) go to the torch form as well.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from kernels.fisher_rules import seq_sqsum_torch

_SOURCE = Path(__file__).with_name("csrc") / "fisher_rules.cpp"
_BUILD: dict[str, bool] = {}
_NAME = "cl_fisher_rules"
_NONE = torch.empty(0)  # an accumulator that is not selected


def _build_dir() -> str | None:
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    path = Path(root) if root else Path(__file__).resolve().parent.parent / ".build" / "torch_extensions"
    try:
        (path / _NAME).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(path / _NAME)


def available() -> bool:
    """Build (once per process) and load the kernel; False, with one warning, when it cannot be built."""
    if "ok" not in _BUILD:
        try:
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils.cpp_extension import load

            load(
                name=_NAME,
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", "-march=native", "-ffp-contract=fast"],
                build_directory=_build_dir(),
                is_python_module=False,
                verbose=False,
            )
            _BUILD["ok"] = True
        except Exception as err:  # no compiler / ninja: the torch form still works
            warnings.warn(
                f"kernels.fisher_cpp: the C++ kernel did not build ({err}); using the torch form", stacklevel=2
            )
            _BUILD["ok"] = False
    return _BUILD["ok"]


def _takes(*ts: Tensor | None) -> bool:
    """CPU float32 / float64 tensors of one dtype (accumulators contiguous), and the kernel built."""
    dtype = ts[0].dtype
    for t in ts:
        if t is not None and (t.device.type != "cpu" or t.dtype != dtype):
            return False
    return dtype in (torch.float32, torch.float64) and available()


def seq_sqsum(g: Tensor, x: Tensor, chunk: int | None = None, out: Tensor | None = None) -> Tensor:
    """``sum_b (g_b^T x_b)^2`` for g (B, T, O), x (B, T, K) -> (O, K), added into ``out`` when given (the
    ``kernels.fisher_rules.SqSum`` signature; ``chunk`` is not needed: nothing per-sample is materialised)."""
    if not _takes(g, x, out) or (out is not None and not out.is_contiguous()):
        return seq_sqsum_torch(g, x, chunk, out)
    if out is None:
        out = torch.zeros(g.shape[2], x.shape[2], dtype=g.dtype)
    return torch.ops.cl_fisher.seq_sqsum_(g, x, out, _NONE.to(g.dtype))


def _acc_ok(acc: Tensor | None, shape: tuple[int, ...]) -> bool:
    return acc is None or (acc.is_contiguous() and tuple(acc.shape) == shape)


def linear(g: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    """The Linear-on-sequences rule for g (B, T, O), x (B, T, K) into the weight (O, K) and bias (O,) accumulators
    (None: not selected); False, before adding anything, for tensors the kernel does not take."""
    o, k = g.shape[2], x.shape[2]
    if not (_takes(g, x, weight, bias) and _acc_ok(weight, (o, k)) and _acc_ok(bias, (o,))):
        return False
    none = _NONE.to(g.dtype)  # an empty weight accumulator: bias alone
    torch.ops.cl_fisher.seq_sqsum_(g, x, none if weight is None else weight, none if bias is None else bias)
    return True


def norm(x: Tensor, g: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, rms: bool) -> bool:
    """The LayerNorm (``rms=False``) / RMSNorm rule over the last dim of x and g (B, ..., C) into the weight and bias
    accumulators (C,); False, before adding anything, for tensors the kernel does not take."""
    c = x.shape[-1]
    if (
        x.shape != g.shape
        or x.dim() < 2
        or not (_takes(x, g, weight, bias) and _acc_ok(weight, (c,)) and _acc_ok(bias, (c,)))
    ):
        return False
    none = _NONE.to(x.dtype)
    torch.ops.cl_fisher.norm_sqsum_(
        x.reshape(x.shape[0], -1, c), g.reshape(g.shape[0], -1, c), none if weight is None else weight,
        none if bias is None else bias, float(eps), rms,
    )  # fmt: skip
    return True
