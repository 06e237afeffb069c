"""Training-step fingerprints and the FLOPs counted for each, for the cached mode of the FLOP counter
(:mod:`cl.callbacks.flops`, whose module docstring gives the rule): a step whose fingerprint was counted is not traced
again.

The fingerprint of a step is the sequence of calls of the *watched* modules (module, grad mode, the shapes and
``requires_grad`` of its positional tensor arguments, its scalar arguments). Watched are:

* every module whose own code (not a submodule's) ran a counted op (matmul, convolution, attention) in a traced step
  of this ``fit``, wherever it lives: a linear layer, a parameterless module doing a matmul, a teacher kept outside
  the LightningModule;
* every module of the LightningModule that owns parameters (at the start of ``fit``) and that no traced step of this
  ``fit`` has called yet: a submodule first called mid-fit changes the fingerprint of the step that calls it.

A parameter owner that a traced step called and whose own code ran no counted op there (a LayerNorm, a ViT's position
embedding holder, a prompt pool's parameters) is not watched after that step. A watched module's calls are recorded
through its call slot (``Module._compiled_call_impl``: when set, ``Module.__call__`` calls it instead of
``Module._call_impl``; the watch records the call, then runs ``_call_impl``, hooks and ``forward`` as usual.
``Module.compile`` fills the same slot: a compiled module's own call is what the watch runs, and it is put back after
``fit``; ``Module.__getstate__`` leaves the slot out, so a deep copy or pickle of a watched module is a plain module),
or by a forward pre-hook where a torch version has no such slot. A traced step records every module call
through global module hooks (it is traced anyway) and keeps, as its fingerprint, the calls of the modules watched after
it, so that the untraced steps that repeat it give the same fingerprint. When a traced step changes the watched set, the
earlier traced steps' fingerprints are re-filtered with it (and, when modules were only dropped, the fingerprints of
untraced steps still waiting for a trace, which then get their count at once if it is known).

Why dropping those modules keeps the count exact, under the rule's assumption (a step's FLOPs are determined by its
calls of the watched modules and their input shapes): a step's count is the sum, over its module calls, of the FLOPs
of the counted ops that each call's own code runs forward, and of their backward ops (ops run outside every module,
in ``training_step`` itself, are in no fingerprint either way: the check below). The assumption, for these modules,
is that a module whose own code ran no counted op in a traced call runs none, forward or backward, in any call, at
any input shapes or grad mode: norms, embeddings, element-wise and shape ops do not turn into matmuls with the shape
of their input. Then each call of a dropped module adds 0 to the sum, so whether it is called, how often, and with
which shapes decides nothing, and the work of its submodules is recorded by their own watches (those that ran a
counted op, or owners not called yet). On the default CODA-Prompt experiment the step's watched calls go from 66 to
48 (the 9 LayerNorms of each of its two ViT passes), 31 of its 40 watched modules.

What the watched set gives up: a module that runs no counted op in a traced step is not in the fingerprint
(containers, activations, dropout, norms: their work is 0 FLOPs or that of their watched submodules), nor is a module
outside the LightningModule called for the first time in an untraced step. Watching few modules, through their call
slot, is what keeps the per-step cost low: a hook makes every call of its module take ``Module._call_impl``'s slow
path (measured in the step: ~10-15 us per hooked call, ~3 us through the slot); a global pre-hook on every module
call cost ~1.0-1.3 ms per step of the default experiment, pre-hooks on its 66 watched calls ~0.9 ms, the slot on its
48 ~0.4 ms (experiments/bench/flop_counter_parts.py, results in experiments/bench/README.md, section "Engine
overhead").

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

    ``StepCache(root)`` starts by watching ``root``'s modules that own parameters (the first step of a ``fit`` is traced
    and settles the watched set); :meth:`close` removes every hook."""

    def __init__(self, root: Any) -> None:
        self.known: dict[tuple, int] = {}  # fingerprint -> FLOPs of one step
        self.expected: dict[Any, tuple] = {}  # batch structure -> fingerprint of the last step with it
        self._counts: dict[Any, int] = {}  # batch structure -> known FLOPs of its expected fingerprint, where known
        self.pending: Counter[tuple] = Counter()  # untraced steps whose fingerprint is not known yet
        self.open = False
        self.traced = False
        self.ambiguous = False  # two traced steps with one fingerprint counted different FLOPs: trace every step
        self.step_flops = 0
        self._traces: dict[tuple, int] = {}  # every call of each traced step -> its FLOPs (re-filtered on new watches)
        self._handles: dict[Any, Any] = {}  # watched module -> what undoes its watch (.remove())
        self._calls: list[Any] | None = None  # the open untraced step's watched calls, flat
        self._all: list[tuple] = []  # the open traced step's calls of every module
        self._stack: list[Any] = []  # modules being called in the open traced step
        self._called: set[Any] = set()  # modules called in a traced step of this fit
        self._counting: set[Any] = set()  # modules whose own code ran a counted op in a traced step of this fit
        self._owners = [m for m in root.modules() if _owns_parameters(m)]
        self._global: list[Any] = []
        for module in self._owners:
            self._watch(module)

    # ------------------------------------------------------------------------------------------- recording
    def _watch(self, module: Any) -> None:
        if not _CALL_SLOT:
            self._handles[module] = module.register_forward_pre_hook(self._record_watched)
            return
        prev = module.__dict__.get("_compiled_call_impl")  # a compiled module's call, else the plain one
        call = prev if prev is not None else module._call_impl
        cache = self

        def record(*args: Any, **kwargs: Any) -> Any:
            calls = cache._calls
            if calls is not None:
                calls.extend(_call(module, args))
            return call(*args, **kwargs)

        object.__setattr__(module, "_compiled_call_impl", record)
        self._handles[module] = _Slot(module, record, prev)

    def _record_watched(self, module: Any, args: tuple) -> None:  # the pre-hook where the call slot is missing
        calls = self._calls
        if calls is not None:
            calls.extend(_call(module, args))

    def _record_any(self, module: Any, args: tuple) -> None:  # global pre-hook, traced steps only
        self._all.append(_call(module, args))
        self._stack.append(module)
        self._called.add(module)

    def _leave(self, module: Any, args: tuple, output: Any) -> None:  # global forward hook, traced steps only
        if self._stack:
            self._stack.pop()

    def counted(self) -> None:
        """Called by a traced step's dispatch mode after each op it counted FLOPs for: watch the module that ran it."""
        if self._stack:
            self._counting.add(self._stack[-1])

    def _fingerprint(self, calls: tuple) -> tuple:
        """The calls of the watched modules, flat (4 items per call, as an untraced step records them: a flat tuple
        compares with fewer pointer chases than nested ones, ~20 us per step here)."""
        watched = self._handles
        return tuple(x for c in calls if c[0] in watched for x in c)

    # ------------------------------------------------------------------------------------------- step windows
    def open_window(self, batch_key: Any) -> bool:
        """Start recording a step; True if it must be traced with the dispatch mode."""
        self._key = batch_key
        self.traced = self.ambiguous or batch_key not in self._counts or bool(self.pending)
        self.step_flops = 0
        if self.traced:
            self._all, self._stack = [], []
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
            if fp == self.expected[self._key]:  # the predicted fingerprint (the usual case): compared, not hashed
                return self._counts[self._key]
            self.expected[self._key] = fp
            if fp in self.known:
                self._counts[self._key] = self.known[fp]
                return self.known[fp]
            del self._counts[self._key]
            self.pending[fp] += 1
            return 0
        for handle in self._global:
            handle.remove()
        calls, self._all, self._stack = tuple(self._all), [], []
        resolved = self.pending.pop(self._fingerprint(calls), 0)  # pending steps: fingerprinted before any change
        if self._traces.get(calls, self.step_flops) != self.step_flops:
            self._ambiguous("the same module calls")
        self._traces[calls] = self.step_flops
        added, removed = self._rewatch()
        if added or removed:  # the earlier traced steps' fingerprints re-filtered, the predictions reset
            self.known, self.expected = {}, {}
            for other, flops in self._traces.items():
                self._learn(self._fingerprint(other), flops)
        fp = self._fingerprint(calls)
        self._learn(fp, self.step_flops)
        self.expected[self._key] = fp
        extra = 0
        if removed and not added and self.pending:  # fingerprints of fewer modules: the pending ones re-filtered
            pending, self.pending = self.pending, Counter()
            for old, n in pending.items():
                self.pending[self._fingerprint(tuple(zip(*[iter(old)] * 4)))] += n
            for key in [k for k in self.pending if k in self.known]:
                extra += self.known[key] * self.pending.pop(key)
        self._counts = {k: self.known[f] for k, f in self.expected.items() if f in self.known}
        return self.step_flops * (1 + resolved) + extra

    def _rewatch(self) -> tuple[set[Any], set[Any]]:
        """Watch the modules that ran a counted op in a traced step of this fit and the parameter owners not called in
        one yet; stop watching the rest. Returns (added, removed)."""
        wanted = self._counting.union(m for m in self._owners if m not in self._called)
        added = wanted.difference(self._handles)
        removed = set(self._handles).difference(wanted)
        for module in added:
            self._watch(module)
        for module in removed:
            self._handles.pop(module).remove()
        return added, removed

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

    @property
    def watched(self) -> frozenset[Any]:
        """The modules whose calls make the fingerprint now."""
        return frozenset(self._handles)

    def close(self) -> None:
        """Remove every hook (end of ``fit``)."""
        for handle in [*self._handles.values(), *self._global]:
            handle.remove()
        self._handles, self._global, self._calls = {}, [], None


# ``Module.__call__`` calls ``module._compiled_call_impl`` instead of its hooks and ``forward`` when it is set (the slot
# ``Module.compile`` fills; ``Module.__getstate__`` leaves it out, so deep copies and pickles of a watched module are
# plain modules). Where a torch version lacks the slot, per-module forward pre-hooks record the calls instead.
_CALL_SLOT = torch.nn.Module.__dict__.get("_compiled_call_impl", False) is None and (
    "_compiled_call_impl" in torch.nn.Module._wrapped_call_impl.__code__.co_names
)


class _Slot:
    """Undoes one module's watch through its call slot (``remove()``, as a hook handle)."""

    __slots__ = ("module", "record", "prev")

    def __init__(self, module: Any, record: Any, prev: Any) -> None:
        self.module, self.record, self.prev = module, record, prev

    def remove(self) -> None:
        slots = self.module.__dict__
        if slots.get("_compiled_call_impl") is self.record:  # not replaced since (Module.compile mid-fit)
            if self.prev is None:
                del slots["_compiled_call_impl"]
            else:
                slots["_compiled_call_impl"] = self.prev


def _owns_parameters(module: Any) -> bool:
    return any(p is not None for p in module._parameters.values())


def _call(module: Any, args: tuple) -> tuple:
    """One module call of a fingerprint, 4 items: (module, grad mode, the shape and ``requires_grad`` of its one
    tensor argument) or (module, grad mode, per positional argument its shape and ``requires_grad`` or its structure,
    None)."""
    if len(args) == 1 and isinstance(args[0], _Tensor):  # the common case, without a generator (~0.3 us less)
        return module, _grad_enabled(), args[0].shape, args[0].requires_grad
    key = tuple((a.shape, a.requires_grad) if isinstance(a, _Tensor) else structure(a, grad=True) for a in args)
    return module, _grad_enabled(), key, None


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
