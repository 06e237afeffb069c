"""RegLoRA's key-position penalty as one fused CPU pass (SEFE, Chen et al., ICML 2025, arXiv 2505.02486; reference
github jinpeng0528/SEFE, ``llava/model/language_model/modeling_llama.py``).

``gathered_abs_mean(A, B, crow, col, weight)`` = ``sum_u weight_u |B[i_u, :] . A[:, j_u]|`` over the positions of a
CSR pattern (rows ``i``, columns ``col``) of the ``d_out x d_in`` matrix ``B A``. Two backends with one signature:

* ``"torch"``: the pure-PyTorch reference, sparse CSR products (``sampled_addmm`` for the values, ``G A^T`` and
  ``B^T G`` with the sparse ``G = weight * sign`` in backward); any device.
* ``"cpp"``: a C++ kernel (``kernels/csrc/gathered_abs_mean.cpp``, compiled on first use with
  ``torch.utils.cpp_extension``; needs a C++ compiler and ninja) that computes the value and both gradients in one pass
  over the positions: for every row ``i`` and every key column ``j`` of it, ``v = B_i . A^T_j``, then
  ``dB_i += w sign(v) A^T_j`` and ``dA^T_j += w sign(v) B_i``. The positions are visited in column tiles
  (:func:`tile_layout`: tile-major order, built once per pattern) so that a tile's ``A^T`` and ``dA^T`` stay
  in the L2 cache; with AVX-512 a float32 adapter of rank 16, 32, 64 or 128 keeps ``B_i`` and ``dB_i`` in registers.
  The sparse products read the pattern three times and permute the values to column-major order once per step; this
  pass reads it once. CPU only. Measured in ``experiments/bench/reglora.py``.

``backend="auto"`` takes ``"cpp"`` for CPU tensors when the kernel builds (once per process; a failed build warns once
and falls back to ``"torch"``), else ``"torch"``. Autograd: the fused pass runs in forward when a gradient is needed and
keeps ``dB``, ``dA^T`` (``r x (d_out + d_in)`` values, fewer than the torch backend's saved signs at 2 % density and
r <= 128); backward scales them by the incoming gradient. Without a gradient to compute (``torch.no_grad``, or
neither factor requiring one) it computes the values alone.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

BACKENDS = ("auto", "torch", "cpp")
# torch warns once per process that sparse CSR support is "in beta"; the two CSR products used here are stable
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
_SOURCE = Path(__file__).with_name("csrc") / "gathered_abs_mean.cpp"
_BUILD: dict[str, object] = {}


def _build_dir() -> str | None:
    """``$TORCH_EXTENSIONS_DIR``, else ``.build/torch_extensions`` beside the ``kernels`` package when writable (a
    checkout: tests move HOME per session, so torch's ``~/.cache`` default would rebuild every session), else None
    (torch's default)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    path = Path(root) if root else Path(__file__).resolve().parent.parent / ".build" / "torch_extensions"
    try:
        (path / "cl_key_penalty").mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(path / "cl_key_penalty")


def cpp_available() -> bool:
    """Build (once per process) and load the C++ kernel; False, with one warning, when it cannot be built."""
    if "ok" not in _BUILD:
        try:
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found"
            from torch.utils.cpp_extension import load

            load(
                name="cl_key_penalty",
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                build_directory=_build_dir(),
                is_python_module=False,
                verbose=False,
            )
            _BUILD["ok"] = True
        except Exception as err:  # no compiler / ninja: the torch backend still works
            msg = f"kernels.key_penalty: the C++ kernel did not build ({err}); using backend='torch'"
            warnings.warn(msg, stacklevel=2)
            _BUILD["ok"] = False
    return bool(_BUILD["ok"])


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"method.penalty_backend={backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "cpp" and device.type != "cpu":
        msg = f"method.penalty_backend='cpp' runs on CPU tensors only (got {device.type}); allowed there: auto, torch"
        raise ValueError(msg)
    if backend == "auto":
        return "cpp" if device.type == "cpu" and cpp_available() else "torch"
    if backend == "cpp" and not cpp_available():
        raise RuntimeError("method.penalty_backend='cpp': the C++ kernel did not build (see the warning above)")
    return backend


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32  # bf16 adapters: computed in float32


class TorchGatheredAbsMean(torch.autograd.Function):
    """The reference backend: sparse CSR products (any device)."""

    @staticmethod
    def forward(ctx, A, B, crow, col, weight, crow_t, row_t, perm):  # noqa: N803
        ctx.dtypes = (A.dtype, B.dtype)
        dtype = _compute_dtype(A)
        A, B = A.to(dtype), B.to(dtype)  # noqa: N806
        shape = (B.shape[0], A.shape[1])
        ones = torch.ones(col.numel(), dtype=dtype, device=A.device)
        pattern = torch.sparse_csr_tensor(crow, col, ones, shape, check_invariants=False)
        with torch.autocast(A.device.type, enabled=False):  # in float32 under bf16-mixed training too
            values = torch.sparse.sampled_addmm(pattern, B, A, beta=0.0).values()
        weight = weight.to(dtype)
        ctx.save_for_backward(A, B, torch.sign(values) * weight, crow, col, crow_t, row_t, perm)
        return (weight * values.abs()).sum()

    @staticmethod
    def backward(ctx, grad):
        A, B, signed, crow, col, crow_t, row_t, perm = ctx.saved_tensors  # noqa: N806
        g = signed * grad
        d_out, d_in = B.shape[0], A.shape[1]
        grad_a = grad_b = None
        if ctx.needs_input_grad[1]:  # CSR @ dense is ~10x faster with a contiguous dense operand
            csr = torch.sparse_csr_tensor(crow, col, g, (d_out, d_in), check_invariants=False)
            grad_b = (csr @ A.T.contiguous()).to(ctx.dtypes[1])
        if ctx.needs_input_grad[0]:
            csr_t = torch.sparse_csr_tensor(crow_t, row_t, g[perm], (d_in, d_out), check_invariants=False)
            grad_a = (csr_t @ B).T.contiguous().to(ctx.dtypes[0])
        return grad_a, grad_b, None, None, None, None, None, None


def tile_columns(rank: int, dtype: torch.dtype) -> int:
    """Columns per tile of the C++ pass: ``A^T`` and ``dA^T`` of a tile in 512 KiB (half a core's L2 on the machine
    measured; 512 columns at rank 128 in float32, the fastest of 128-4096 there)."""
    size = torch.finfo(_compute_dtype(torch.empty(0, dtype=dtype))).bits // 8
    return max(64, (512 << 10) // (2 * max(1, int(rank)) * size))


def tile_layout(
    crow: torch.Tensor, col: torch.Tensor, weight: torch.Tensor, d_in: int, tile: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A row-major CSR pattern in the C++ pass's tile-major order: ``(ptr, col, weight)`` with ``ptr`` of
    ``tiles * d_out + 1`` entries (``ptr[t * d_out + i]`` starts row ``i``'s positions in column tile ``t``)."""
    if not cpp_available():
        raise RuntimeError("kernels.key_penalty.tile_layout needs the C++ kernel, which did not build")
    ptr, order = torch.ops.cl_kernels.tile_order(crow.cpu(), col.cpu(), int(d_in), int(tile))
    return ptr, col.cpu()[order], weight.cpu()[order]


class CppGatheredAbsMean(torch.autograd.Function):
    """The fused C++ backend (CPU): value and both gradients in one pass, in forward. ``ptr`` is a CSR row pointer
    (one tile) or :func:`tile_layout`'s."""

    @staticmethod
    def forward(ctx, A, B, ptr, col, weight):  # noqa: N803
        ctx.dtypes = (A.dtype, B.dtype)
        dtype = _compute_dtype(A)
        value, grad_b, grad_at = torch.ops.cl_kernels.gathered_abs_mean(
            A.detach().to(dtype).T.contiguous(), B.detach().to(dtype), ptr, col, weight.to(dtype), True
        )
        ctx.save_for_backward(grad_b, grad_at)
        return value

    @staticmethod
    def backward(ctx, grad):
        grad_b, grad_at = ctx.saved_tensors
        grad_a = (grad_at.T * grad).contiguous().to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_b = (grad_b * grad).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None, None


def gathered_abs_mean(
    A: torch.Tensor,  # noqa: N803
    B: torch.Tensor,  # noqa: N803
    crow: torch.Tensor,
    col: torch.Tensor,
    weight: torch.Tensor,
    transpose: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``sum_u weight_u |(B A)_{i_u j_u}|`` over a CSR pattern (int32 ``crow``, ``col``) of ``B A``.

    ``transpose`` = ``(crow_t, row_t, perm)``, the pattern in column-major order, is needed by the torch backend's
    ``dA`` (built once per pattern by the caller). The C++ backend also takes :func:`tile_layout`'s ``(ptr, col,
    weight)`` in place of ``(crow, col, weight)`` (built once per pattern by the caller; a CSR pattern is one tile:
    the same result, slower on large matrices)."""
    chosen = resolve_backend(backend, A.device)
    if chosen == "cpp":
        if torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
            return CppGatheredAbsMean.apply(A, B, crow, col, weight)
        dtype = _compute_dtype(A)  # no gradient wanted: the values alone (a third of the pass)
        at = A.detach().to(dtype).T.contiguous()
        return torch.ops.cl_kernels.gathered_abs_mean(at, B.detach().to(dtype), crow, col, weight.to(dtype), False)[0]
    if transpose is None:
        raise ValueError("gathered_abs_mean(backend='torch') needs transpose=(crow_t, row_t, perm)")
    return TorchGatheredAbsMean.apply(A, B, crow, col, weight, *transpose)
