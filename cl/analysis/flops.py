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

from torch.utils._python_dispatch import TorchDispatchMode


class LightFlopCounter(TorchDispatchMode):
    """``with LightFlopCounter() as c: ...; c.total``: FLOPs of every op with a formula in ``flop_registry``."""

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out

    def get_total_flops(self) -> int:
        return self.total


def flop_free(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a training hook that runs no op with a FLOP formula (no matmul, convolution or attention), e.g. a replay
    buffer's update in ``on_train_batch_end``. The FLOP counter (:mod:`cl.callbacks.flops`) then need not watch the
    lean loop's batch hooks. The mark is on the function, so a subclass that overrides the hook must mark it again."""
    hook.flop_free = True  # type: ignore[attr-defined]
    return hook


def is_flop_free(owner: Any, hook_name: str) -> bool:
    """Whether ``type(owner).<hook_name>`` is marked with :func:`flop_free`."""
    return bool(getattr(getattr(type(owner), hook_name, None), "flop_free", False))


def count_flops(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """``(fn(*args, **kwargs), FLOPs it spent)``."""
    with LightFlopCounter() as counter:
        out = fn(*args, **kwargs)
    return out, counter.total
