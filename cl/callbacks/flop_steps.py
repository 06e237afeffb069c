"""Training-step fingerprints and the FLOPs counted for each, for the cached mode of the FLOP counter
(:mod:`cl.callbacks.flops`, whose module docstring gives the rule): a step whose fingerprint was counted is not traced
again.

The fingerprint of a step is the sequence of calls of the *watched* modules (module, grad mode, the shapes and
``requires_grad`` of its positional tensor arguments, its scalar arguments). Watched are: every module of the
LightningModule that owns parameters (at the start of ``fit``), and every module that a traced step of this ``fit``
called and that owns parameters or ran a counted op (matmul, convolution, attention) itself: a parameterless module
doing a matmul, a teacher kept outside the LightningModule. Their calls are recorded by per-module forward pre-hooks;
a traced step records every module call through global module hooks (it is traced anyway) and keeps, as its
fingerprint, the calls of the modules watched after it (the ones it found included), so that the untraced steps that
repeat it give the same fingerprint.

Hooking only these modules costs ~0.25 ms per step of the default CODA-Prompt experiment (54 of its 192 module calls
are watched) where a global pre-hook on every module call cost ~1.0-1.3 ms (every module call then takes
``Module._call_impl``'s slow path; experiments/bench/flop_counter_parts.py, results in experiments/bench/README.md,
section "Engine overhead"). What it gives up: a module that owns no parameters and runs no counted op in a traced step
is not in the fingerprint (containers, activations, dropout: their work is 0 FLOPs or that of their watched children),
nor is a module outside the LightningModule called for the first time in an untraced step.

Check of the rule: two traced steps of one ``fit`` whose fingerprints are equal must count the same FLOPs. If they do
not, the fingerprint does not determine the step's work here: a warning names the case and every later step of the
``fit`` is traced (``StepCache.ambiguous``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn


class StepCache:
    """Fingerprints of the training steps of one ``fit`` and the FLOPs counted for each (see the module docstring).

    ``StepCache(root)`` watches ``root``'s modules that own parameters; :meth:`close` removes every hook."""

    def __init__(self, root: Any) -> None:
        self.known: dict[tuple, int] = {}  # fingerprint -> FLOPs of one step
        self.expected: dict[Any, tuple] = {}  # batch structure -> fingerprint of the last step with it
        self.pending: Counter[tuple] = Counter()  # untraced steps whose fingerprint is not known yet
        self.open = False
        self.traced = False
        self.ambiguous = False  # two traced steps with one fingerprint counted different FLOPs: trace every step
        self.step_flops = 0
        self._traces: dict[tuple, int] = {}  # every call of each traced step -> its FLOPs (re-filtered on new watches)
        self._handles: dict[Any, Any] = {}  # watched module -> its pre-hook
        self._calls: list[tuple] | None = None  # the open untraced step's watched calls
        self._all: list[tuple] = []  # the open traced step's calls of every module
        self._stack: list[Any] = []  # modules being called in the open traced step
        self._found: set[Any] = set()  # modules the open traced step found to watch
        self._global: list[Any] = []
        for module in root.modules():
            if _owns_parameters(module):
                self._watch(module)

    # ------------------------------------------------------------------------------------------- recording
    def _watch(self, module: Any) -> None:
        self._handles[module] = module.register_forward_pre_hook(self._record_watched)

    def _record_watched(self, module: Any, args: tuple) -> None:
        calls = self._calls
        if calls is not None:
            calls.append(_call(module, args))

    def _record_any(self, module: Any, args: tuple) -> None:  # global pre-hook, traced steps only
        self._all.append(_call(module, args))
        self._stack.append(module)
        if module not in self._handles and _owns_parameters(module):
            self._found.add(module)

    def _leave(self, module: Any, args: tuple, output: Any) -> None:  # global forward hook, traced steps only
        if self._stack:
            self._stack.pop()

    def counted(self) -> None:
        """Called by a traced step's dispatch mode after each op it counted FLOPs for: watch the module that ran it."""
        if self._stack and self._stack[-1] not in self._handles:
            self._found.add(self._stack[-1])

    def _fingerprint(self, calls: tuple) -> tuple:
        watched = self._handles
        return tuple(c for c in calls if c[0] in watched)

    # ------------------------------------------------------------------------------------------- step windows
    def open_window(self, batch_key: Any) -> bool:
        """Start recording a step; True if it must be traced with the dispatch mode."""
        self._key = batch_key
        expected = self.expected.get(batch_key)
        self.traced = self.ambiguous or expected is None or expected not in self.known or bool(self.pending)
        self.step_flops = 0
        if self.traced:
            self._all, self._stack, self._found = [], [], set()
            self._global = [
                torch.nn.modules.module.register_module_forward_pre_hook(self._record_any),
                torch.nn.modules.module.register_module_forward_hook(self._leave, always_call=True),
            ]
        else:
            self._calls = []
        self.open = True
        return self.traced

    def close_window(self) -> int:
        """Finish the step; the FLOPs to add now (its own, plus those of earlier untraced steps it resolves)."""
        if not self.open:
            return 0
        self.open = False
        if not self.traced:
            fp, self._calls = tuple(self._calls), None
            self.expected[self._key] = fp
            if fp in self.known:
                return self.known[fp]
            self.pending[fp] += 1
            return 0
        for handle in self._global:
            handle.remove()
        calls, self._all, self._stack = tuple(self._all), [], []
        resolved = self.pending.pop(self._fingerprint(calls), 0)  # pending steps: fingerprinted before any new watch
        if self._found:  # new watches: the earlier traced steps' fingerprints re-filtered, the predictions reset
            for module in self._found:
                self._watch(module)
            self._found = set()
            self.known, self.expected = {}, {}
            for other, flops in self._traces.items():
                self._learn(self._fingerprint(other), flops)
        if self._traces.get(calls, self.step_flops) != self.step_flops:
            self._ambiguous("the same module calls")
        self._traces[calls] = self.step_flops
        fp = self._fingerprint(calls)
        self._learn(fp, self.step_flops)
        self.expected[self._key] = fp
        return self.step_flops * (1 + resolved)

    def _learn(self, fp: tuple, flops: int) -> None:
        if self.known.get(fp, flops) != flops:
            self._ambiguous("one fingerprint")
        self.known[fp] = flops

    def _ambiguous(self, what: str) -> None:
        if not self.ambiguous:
            rank_zero_warn(
                f"FlopCounter: two traced steps with {what} counted different FLOPs (work outside the watched modules "
                "changed between steps); every later step of this fit is traced"
            )
        self.ambiguous = True

    def close(self) -> None:
        """Remove every hook (end of ``fit``)."""
        for handle in [*self._handles.values(), *self._global]:
            handle.remove()
        self._handles, self._global, self._calls = {}, [], None


def _owns_parameters(module: Any) -> bool:
    return any(p is not None for p in module._parameters.values())


def _call(module: Any, args: tuple) -> tuple:
    """One module call of a fingerprint: (module, grad mode, per positional argument its shape and ``requires_grad``
    or its structure)."""
    if len(args) == 1 and isinstance(args[0], _Tensor):  # the common case, without a generator (~0.3 us less)
        return module, _grad_enabled(), ((args[0].shape, args[0].requires_grad),)
    key = tuple((a.shape, a.requires_grad) if isinstance(a, _Tensor) else structure(a, grad=True) for a in args)
    return module, _grad_enabled(), key


_Tensor, _grad_enabled = torch.Tensor, torch.is_grad_enabled


_SCALARS = (int, float, bool, str, type(None))


def structure(obj: Any, grad: bool = False) -> Any:
    """A hashable description of ``obj``: tensor shapes (and ``requires_grad``), nested sequences, scalars."""
    if isinstance(obj, _Tensor):
        return (tuple(obj.shape), obj.requires_grad) if grad else tuple(obj.shape)
    if isinstance(obj, (list, tuple)):
        return tuple(structure(o, grad) for o in obj)
    if isinstance(obj, dict):
        return tuple((k, structure(v, grad)) for k, v in obj.items())
    return obj if isinstance(obj, _SCALARS) else type(obj).__name__
