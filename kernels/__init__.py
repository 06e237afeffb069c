"""Fused kernels with pure-PyTorch references (``fisher_diagonal``; ``gated_class_attention``, GCAB's masked
class-attention). ``from kernels import fisher_diagonal`` imports torch only on first use;
Triton is imported only when a Triton path is dispatched (CUDA tensors, or ``backend="triton"``)."""

from __future__ import annotations

from typing import Any

__all__ = ["FisherResult", "fisher_diagonal", "gated_class_attention"]


def __getattr__(name: str) -> Any:
    if name == "gated_class_attention":
        from kernels import gated_attention

        return gated_attention.gated_class_attention
    if name in __all__:
        from kernels import fisher

        return getattr(fisher, name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
