"""A light FLOP counter with the formulas of ``torch.utils.flop_counter`` (fvcore-style: 2 * multiply-adds of
matmuls, convolutions and attention, forward and backward).

``FlopCounterMode`` also tracks the module hierarchy for its per-module table (global module hooks) and tries to
decompose every op without a formula, which makes small models' training steps about 2-3x slower on CPU.
:class:`LightFlopCounter` keeps only the total: each op found in ``flop_registry`` is counted with the same formula,
nothing else is done. Tests check that both counters give the same total on a ViT and a ResNet training step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode


class LightFlopCounter(TorchDispatchMode):
    """``with LightFlopCounter() as c: ...; c.total``: FLOPs of every op with a formula in ``flop_registry``.

    The registry's formulas are wrapped by ``shape_wrapper``, which maps their arguments to shapes with ``tree_map``;
    a wrapped formula is called here on its unwrapped function with the shapes taken directly (tensors, and tensors in
    lists, tuples and dicts: what ``tree_map`` reaches in aten arguments), ~15 us less per counted op."""

    def __init__(self, on_count: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.registry = _formulas()
        self.total = 0
        self.on_count = on_count  # called after each op counted with FLOPs > 0 (the cached FLOP counter's watch)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            raw, on_shapes = formula
            if on_shapes:
                flops = int(raw(*_shapes(args), out_shape=_shapes(out), **_shapes(kwargs)))
            else:
                flops = int(raw(*args, **kwargs, out_val=out))
            self.total += flops
            if flops and self.on_count is not None:
                self.on_count()
        return out

    def get_total_flops(self) -> int:
        return self.total


_FORMULAS: dict[Any, tuple[Callable[..., Any], bool]] = {}


def _register_cpu_attention() -> None:
    """torch's ``flop_registry`` has the attention formulas for the CUDA kernels of ``scaled_dot_product_attention``
    but not for the CPU one (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward, torch 2.14), so on
    CPU a ViT's attention counted 0 (``FlopCounterMode`` too) while on GPU it counts. The CPU kernel computes the same
    two matmuls forward and four backward: it gets the flash kernel's formulas (test: equal to the math backend's
    ``bmm`` count), registered in torch's registry, so ``FlopCounterMode`` counts it too."""
    from torch.ops import aten
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    pairs = (
        ("_scaled_dot_product_flash_attention_for_cpu", aten._scaled_dot_product_flash_attention),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", aten._scaled_dot_product_flash_attention_backward),
    )
    for name, same in pairs:
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry and same in flop_registry:
            register_flop_formula(op, get_raw=True)(flop_registry[same])


_register_cpu_attention()


def _formulas() -> dict[Any, tuple[Callable[..., Any], bool]]:
    """``flop_registry`` as op -> (function, whether it takes shapes): the unwrapped function of a formula wrapped by
    ``shape_wrapper`` (recognised by the wrapper's code object), else the registered callable as it is."""
    from torch.utils.flop_counter import flop_registry, shape_wrapper

    if len(_FORMULAS) != len(flop_registry):  # formulas registered later (register_flop_formula) are picked up
        wrapper_code = shape_wrapper(lambda: 0).__code__
        _FORMULAS.clear()
        for op, formula in flop_registry.items():
            inner = getattr(formula, "__wrapped__", None)
            wrapped = inner is not None and getattr(formula, "__code__", None) is wrapper_code
            _FORMULAS[op] = (inner, True) if wrapped else (formula, False)
    return _FORMULAS


def _shapes(obj: Any) -> Any:
    """``tree_map(get_shape, obj)`` of ``torch.utils.flop_counter`` for aten arguments: tensors become their shapes."""
    if isinstance(obj, Tensor):
        return obj.shape
    kind = type(obj)
    if kind is tuple or kind is list:
        return kind(_shapes(o) for o in obj)
    if kind is dict:
        return {k: _shapes(v) for k, v in obj.items()}
    return obj


def count_flops(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """``(fn(*args, **kwargs), FLOPs it spent)``."""
    with LightFlopCounter() as counter:
        out = fn(*args, **kwargs)
    return out, counter.total
