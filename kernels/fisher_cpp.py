"""Fused C++ CPU passes of the Fisher's Linear-on-sequences, LayerNorm / RMSNorm, eval-mode BatchNorm
(``csrc/fisher_rules.cpp``) and per-sample Conv2d rules (``csrc/fisher_conv.cpp``).

``kernels.fisher_rules.seq_sqsum_torch`` forms each sample's ``O x K`` product with a bmm and squares it in a second
pass; with short sequences (T = 17 tokens: 17 multiply-adds per element written) that product is write-bound and ran
at about 2x the training pass's weight-gradient GEMM. The C++ kernel keeps an output block in L1 and register tiles of
the per-sample products, squares them where they are formed, and writes each output element once per sample into L1
(measured in ``experiments/bench/README.md``, Fisher family); the bias term ``sum_b (sum_t g_bt)^2`` is added in the
same call. The norm rule (``norm``) recomputes ``xhat`` per token and accumulates ``sum_t g * xhat`` and ``sum_t g`` per
sample without the three ``(B, T, C)`` temporaries of the torch form (each a fresh allocation, page-faulted where
glibc maps large blocks: the torch rule measured 3-15x the layer's own forward). Exact: the same sums, accumulated in
the tensors' dtype (float32 or float64; norm statistics in float64) in a different order.

The conv rule (``conv``) replaces the torch form's unfold of the batch, its transposed copy and the per-sample product
(``F.unfold`` + bmm, or a grouped convolution's weight gradient for >= 256 output positions): per sample it reads the
patches straight from a zero-padded copy of the input (register tiles of patch rows x output channels, squared into a
per-thread accumulator), no unfolded tensor. The BatchNorm rule (``batchnorm``) forms the per-sample, per-channel sums
``sum_s g (x - mean)`` and ``sum_s g`` in one read of x and g, without the torch form's ``(B, C, S)`` temporary. On the
cnn_small digits model (thread CPU time over the 22 batches of D, one thread) the conv rule went from 0.27 to 0.05 s and
the BatchNorm rule from 0.047 to 0.010 s of a per-sample Fisher pass now about as long as the batch-mode one; the conv
kernel ran 1.2-5x faster than the torch rule on every convolution of cnn_small and resnet18_reduced
(``experiments/unlearn_native/README.md``, speed section).

The kernels are compiled on first use with ``torch.utils.cpp_extension`` (a C++ compiler and ninja; built into
``.build/torch_extensions`` beside the package, as ``kernels.key_penalty`` does); when it does not build, one warning
is given, ``seq_sqsum`` is ``kernels.fisher_rules.seq_sqsum_torch`` and the rules run their torch forms
(``kernels.fisher`` passes no fused module to them). Tensors a kernel does not take (not CPU, not
float32/float64, mixed dtypes, a non-contiguous accumulator) go to the torch form as well.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from kernels.fisher_rules import GROUPED_MIN_POSITIONS, conv_padding, seq_sqsum_torch

_SOURCES = [str(Path(__file__).with_name("csrc") / name) for name in ("fisher_rules.cpp", "fisher_conv.cpp")]
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
                sources=_SOURCES,
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


def _along_x(mod: nn.Conv2d, g: Tensor, positions: int) -> bool:
    """Whether ``csrc/fisher_conv.cpp`` uses its vectors-along-x form (its ``lvec``): stride 1 along x, output rows of
    whole 32-byte vectors, patch rows K <= positions / 2."""
    k = mod.weight[0].numel()
    return mod.stride[1] == 1 and g.shape[3] % (32 // g.element_size()) == 0 and 2 * k <= positions


def conv(mod: nn.Conv2d, xs: list[Tensor], gs: list[Tensor], weight: Tensor | None, bias: Tensor | None) -> bool:
    """The per-sample Conv2d rule (``csrc/fisher_conv.cpp``) for inputs ``xs`` and output gradients ``gs`` of ``mod``
    into the weight (shaped like ``mod.weight``) and bias (C_out,) accumulators (None: not selected). Any stride,
    dilation, groups and padding (zero padding in the kernel; other ``padding_mode`` values and ``'same'`` /
    ``'valid'`` padded here first, as the torch rule does). False, before adding anything, for what it leaves to the
    torch rule: a module called more than once in the forward (the per-sample gradient sums the calls before it is
    squared), tensors not CPU float32 / float64 of one dtype, a non-contiguous or misshapen accumulator, and depthwise
    convolutions (one output channel per group) with ``GROUPED_MIN_POSITIONS`` or more output positions that the
    kernel's vectors-along-x form does not take (``_along_x``): its patch-row form vectorises over a group's output
    channels, so one channel fills 1 of 8-16 lanes, and the torch rule's grouped-convolution form was faster there
    (torch 2.6 vs C++ 4.2 ms for 64 channels at 16 x 16, batch 64, before the vectors-along-x form; that form now
    takes 16 x 16 in 2.2 ms). Measured: ``experiments/bench/fisher_conv.py``, ``experiments/unlearn_native/README.md``
    (speed section)."""
    if len(xs) != 1 or xs[0].dim() != 4 or gs[0].dim() != 4 or not _takes(xs[0], gs[0], weight, bias):
        return False
    positions = gs[0].shape[2] * gs[0].shape[3]
    if mod.out_channels == mod.groups and positions >= GROUPED_MIN_POSITIONS and not _along_x(mod, gs[0], positions):
        return False
    if not (_acc_ok(weight, tuple(mod.weight.shape)) and _acc_ok(bias, (mod.out_channels,))):
        return False
    x, padding = xs[0], mod.padding
    if isinstance(padding, str) or mod.padding_mode != "zeros":
        x, padding = conv_padding(mod, x), (0, 0)
    none = _NONE.to(x.dtype)
    torch.ops.cl_fisher.conv_sqsum_(
        x, gs[0], none if weight is None else weight, none if bias is None else bias, list(mod.kernel_size),
        list(mod.stride), list(padding), list(mod.dilation), mod.groups,
    )  # fmt: skip
    return True


def batchnorm(
    xs: list[Tensor], gs: list[Tensor], mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None
) -> bool:
    """The eval-mode BatchNorm rule (``kernels.fisher_rules.batchnorm_rule``) for one call, x and g (B, C, *spatial),
    into the weight and bias accumulators (C,), given the running mean and ``1 / sqrt(var + eps)``; False, before
    adding anything, for several calls or tensors the kernel does not take."""
    if len(xs) != 1 or xs[0].shape != gs[0].shape or xs[0].dim() < 2:
        return False
    x, g = xs[0], gs[0]
    b, c = x.shape[:2]
    if not (_takes(x, g, mean, invstd, weight, bias) and _acc_ok(weight, (c,)) and _acc_ok(bias, (c,))):
        return False
    if mean.numel() != c or invstd.numel() != c:
        return False
    none = _NONE.to(x.dtype)
    torch.ops.cl_fisher.bn_sqsum_(
        x.reshape(b, c, -1), g.reshape(b, c, -1), mean, invstd, none if weight is None else weight,
        none if bias is None else bias,
    )  # fmt: skip
    return True
