"""Fast exact Fisher diagonal: one forward and one input-gradient backward per batch, per-layer rules on the captured
activations and output gradients (see ``kernels.fisher_rules`` for the equations).

Mechanics of one batch (``fast_batch``):

1. Forward hooks on the modules owning selected parameters record the module input and output; a tensor hook on the
   output (registered before any in-place op, so it receives the gradient of the pre-in-place value) receives
   ``g = d(sum_i l_i)/dy``; as soon as all calls of a module have their gradient, the rule runs inside the backward
   and the captured tensors are released (peak memory close to a training pass). On CPU with T > 1 intra-op threads
   (``kernels.fisher_pool.RuleRunner``) a Linear-on-vectors rule (one large product) runs there on all T threads;
   the other rules go to ``rule_workers`` worker threads (one intra-op thread each) while the backward continues on
   the remaining threads, and the calling thread helps drain them once the backward returns.
2. ``torch.autograd.grad(sum_i l_i, drivers)`` with the drivers being layer outputs (or inputs), never parameters,
   so no batched weight gradient is computed and ``.grad`` is untouched. Every batch runs "frozen" when that drive
   reaches every captured layer: all model parameters have ``requires_grad`` off during the pass, and a captured layer
   whose output then needs no gradient (its input does not depend on a driver, e.g. the first layer on ``x``) has
   that output replaced by a fresh leaf, which is the driver. The backward then computes only the input gradients
   that training computes too (not d/dx of the first layer, nor any weight gradient), and autograd holds no
   layer-output gradient until the end (peak memory as in training). The first batch of a call runs frozen; if a
   captured layer then got no gradient, its sums are discarded, two 2-sample probes without rules decide (does the
   frozen drive reach the same layers as driving through every layer output?) and the batch runs again
   (``kernels.fisher._probe_drive``).
3. Parameters that broadcast over the batch (leading dim 1, e.g. ViT ``cls_token`` / ``pos_embed``) are replaced for
   the forward by a batch-expanded leaf ``P (B, ...)``; ``dL/dP_i`` is then exactly sample i's gradient. The rule is
   checked on the first sample against a per-sample autograd pass and dropped if it disagrees; once per call, or once
   per model when the verdict can be kept (``kernels.fisher._BROADCAST_VERDICTS``).
4. Parameters of other modules called with a single tensor get per-sample vector-Jacobian products of that module
   alone (torch.func); anything else (shared parameters, modules whose forward never runs, multi-input modules) is
   returned as ``fallback`` for the whole-model torch.func reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import fisher_cpp
from kernels.fisher_pool import RulePool, RuleRunner
from kernels.fisher_reference import sample_labels
from kernels.fisher_rules import SqOps, SqSum, chunk_size, rule_for, seq_sqsum_torch, vec_sqsum_torch

RULE_THREADS = 1  # intra-op threads for the small-op rules on CPU when rule_workers=0: their many small ops
# (per-sample products, OpenMP regions of well under a millisecond) ran 1.5-7x slower with 2 threads


@dataclass
class _Owner:
    module: nn.Module
    local: dict[str, str]  # local parameter name -> full name
    rule: Callable[..., dict[str, Tensor] | None] | None  # None: module-level vjp
    calls: list[list] = field(default_factory=list)  # [input, output, in_version, out_version, grad]
    done: bool = False


@dataclass
class FastPlan:
    owners: dict[str, _Owner]
    broadcast: list[tuple[nn.Module, str, str]]
    fallback: list[str]
    clone: set[str] = field(default_factory=set)
    checked_broadcast: bool = False
    freeze: bool = False  # parameters frozen, first layers' outputs are the drivers (see the module docstring, 2.)
    drive_decided: bool = False
    probe: bool = False  # a probe pass: computes no rule, only records which layers fired
    fired: set[str] = field(default_factory=set)  # modules whose output gradient arrived in the last pass
    captured: set[str] = field(default_factory=set)  # modules with a supported (captured) call in the last pass
    check_values: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # (batch sum, sample 0's square)
    rule_workers: int | None = None  # worker threads for the rules on CPU (kernels.fisher_pool); None: auto
    pool: RulePool | None = None  # those workers, kept for every batch of the call (closed by kernels.fisher)


def resolve_workers(requested: int | None, threads: int, device: torch.device) -> int:
    """Rule worker threads for a pass: 0 (rules inline in the backward) on one thread or off CPU; else ``requested``,
    or ``threads - 1`` when None (the backward keeps the remaining intra-op threads)."""
    if device.type != "cpu" or threads < 2:
        return 0
    return max(1, threads - 1) if requested is None else requested


def make_plan(model: nn.Module, names: list[str], rule_workers: int | None = None) -> FastPlan:
    """Sort the selected parameters into rule / module-vjp / broadcast / fallback."""
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for local, p in mod._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((mname, mod, local))
    params = dict(model.named_parameters())
    plan = FastPlan(owners={}, broadcast=[], fallback=[], rule_workers=rule_workers)
    for full in names:
        owners = {(mn, lc) for mn, _, lc in holders[id(params[full])]}
        if len(owners) != 1:
            plan.fallback.append(full)  # tied weights: used by several modules
            continue
        mname, mod, local = holders[id(params[full])][0]
        rule = rule_for(mod)
        if rule is not None and local in ("weight", "bias"):
            plan.owners.setdefault(mname, _Owner(mod, {}, rule)).local[local] = full
        elif params[full].dim() >= 2 and params[full].shape[0] == 1 and rule is None:
            plan.broadcast.append((mod, local, full))
        elif rule is None:
            plan.owners.setdefault(mname, _Owner(mod, {}, None)).local[local] = full
        else:
            plan.fallback.append(full)
    return plan


def _module_vjp_sqsum(owner: _Owner, chunk: int | None, acc: dict[str, Tensor]) -> None:
    """sum_i (sum_calls vjp_i)^2 for a module's direct parameters, per sample with torch.func."""
    from torch.func import functional_call, vjp, vmap

    mod = owner.module
    params = {lc: mod._parameters[lc].detach() for lc in owner.local}
    calls = [(c[0].detach(), c[4]) for c in owner.calls if c[4] is not None]
    b = calls[0][0].shape[0]

    def one(xi: Tensor, gi: Tensor) -> dict[str, Tensor]:
        _, pull = vjp(lambda p: functional_call(mod, p, (xi.unsqueeze(0),)), params)
        return pull(gi.unsqueeze(0))[0]

    c = chunk_size(b, sum(p.numel() for p in params.values()), chunk)
    for s in range(0, b, c):
        tot: dict[str, Tensor] = {}
        for xc, gc in calls:
            part = vmap(one)(xc[s : s + c], gc[s : s + c])
            tot = part if not tot else {k: tot[k] + part[k] for k in tot}
        for lc, full in owner.local.items():
            acc[full].add_(tot[lc].square().sum(0).to(acc[full].dtype))


def _apply_rule(
    owner: _Owner, xs: list[Tensor], gs: list[Tensor], acc: dict[str, Tensor], failed: list[str], ops: SqOps
) -> None:
    """One layer's rule; runs inline in the backward or on a worker thread (grad mode is per thread)."""
    with torch.no_grad():
        ok = owner.rule(owner.module, xs, gs, acc, ops)
    if not ok:
        failed.extend(owner.local.values())


def fast_batch(
    plan: FastPlan,
    model: nn.Module,
    forward_fn: Callable[[Tensor], Tensor] | None,
    x: Tensor,
    y: Tensor | None,
    generator: torch.Generator | None,
    chunk: int | None,
    seq: SqSum,
    vec: SqSum,
    acc: dict[str, Tensor],
) -> tuple[Tensor, list[str]]:
    """Adds this batch's sums of squared per-sample gradients into ``acc`` (full name -> accumulator);
    returns (labels used, names left to the reference). Broadcast parameters are held in ``plan.check_values``
    until the caller has checked them once."""
    plan.fired.clear()
    plan.captured.clear()
    for _ in range(3):
        result = _attempt(plan, model, forward_fn, x, y, generator, chunk, seq, vec, acc)
        if isinstance(result, tuple):
            return result
        y = result  # retry with cloned captures and the labels already drawn
    raise RuntimeError("fisher_diagonal: in-place operations defeat activation capture; use backend='reference'")


def _attempt(plan, model, forward_fn, x, y, generator, chunk, seq, vec, acc):  # noqa: ANN001, ANN202
    records: list[list] = []  # every capture; emptied at the end (the grad hooks' closures hold them: no cycles)
    try:
        return _attempt_inner(plan, model, forward_fn, x, y, generator, chunk, seq, vec, acc, records)
    finally:
        for rec in records:
            rec.clear()
        for owner in plan.owners.values():
            owner.calls.clear()


def _attempt_inner(plan, model, forward_fn, x, y, generator, chunk, seq, vec, acc, records):  # noqa: ANN001, ANN202
    failed: list[str] = []
    handles = []
    subs: list[tuple[nn.Module, str, Tensor, Tensor]] = []
    leaves: list[Tensor] = []  # frozen drive: fresh leaf outputs of the layers whose input needs no gradient
    frozen = [p for p in model.parameters() if p.requires_grad] if plan.freeze else []
    runner: RuleRunner | None = None  # set for the backward (where each rule runs: kernels.fisher_pool)
    ops = SqOps(seq, vec, chunk, fisher_cpp if seq is fisher_cpp.seq_sqsum else None)

    def run_rule(owner: _Owner) -> None:
        calls = [c for c in owner.calls if c[4] is not None]
        owner.done = True
        if calls and not plan.probe:  # a probe only records which layers the backward reached
            local_acc = {lc: acc[full] for lc, full in owner.local.items()}
            task = partial(_apply_rule, owner, [c[0] for c in calls], [c[4] for c in calls], local_acc, failed)
            gemm = isinstance(owner.module, nn.Linear) and all(c[0].dim() == 2 for c in calls)
            if runner is None:  # after the backward (rules whose hook never completed)
                task(ops)
            else:
                runner.run(partial(task, ops), gemm)
        for c in owner.calls:  # release the captures now, not at the end of the backward
            c[0] = c[1] = c[4] = None
        owner.calls.clear()

    def fwd_hook(mname: str, owner: _Owner) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict, out: object) -> object:
            if (
                len(args) != 1
                or kwargs
                or not isinstance(args[0], Tensor)
                or not isinstance(out, Tensor)
                or args[0].dim() == 0
                or args[0].shape[0] != x.shape[0]  # not batched (e.g. a layer applied to a parameter)
            ):
                owner.calls.append([None, None, 0, 0, None])  # unsupported call pattern
                return None
            cloned = mname in plan.clone  # keep private copies: later in-place ops cannot reach them
            inp = args[0].detach().clone() if cloned else args[0]
            new_out = out.clone() if cloned else None
            if plan.freeze and not out.requires_grad and out.is_floating_point():
                out = out.detach().requires_grad_(True)
                leaves.append(out)
                new_out = out.clone()  # later in-place ops must not touch the leaf
            if out.is_floating_point():
                plan.captured.add(mname)
            rec = [inp, out, inp._version, out._version, None]
            owner.calls.append(rec)
            records.append(rec)
            if out.requires_grad:

                def grad_hook(g: Tensor, rec: list = rec) -> None:
                    rec[4] = g
                    plan.fired.add(mname)
                    if owner.rule is not None and all(c[4] is not None for c in owner.calls):
                        run_rule(owner)

                out.register_hook(grad_hook)
            return new_out

        return hook

    try:
        for p in frozen:
            p.requires_grad_(False)
        for mname, owner in plan.owners.items():
            owner.calls.clear()
            owner.done = False
            handles.append(owner.module.register_forward_hook(fwd_hook(mname, owner), with_kwargs=True))
        for mod, local, _full in plan.broadcast:
            p = mod._parameters[local]
            sub = p.detach().expand(x.shape[0], *p.shape[1:]).clone().requires_grad_(True)
            mod._parameters[local] = sub
            subs.append((mod, local, p, sub))
        with torch.enable_grad():
            logits = model(x) if forward_fn is None else forward_fn(x)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"fisher_diagonal: forward_fn must return logits (B, C); got {tuple(logits.shape)}")
            if y is None:
                y = sample_labels(logits, generator)
            loss = F.cross_entropy(logits, y, reduction="sum")
        drivers: list[Tensor] = [s[3] for s in subs] + leaves
        retry = False
        for mname, owner in plan.owners.items():
            for rec in owner.calls:
                if rec[0] is None:
                    continue
                need_clone = rec[0]._version != rec[2]  # module input changed in place afterwards
                if not need_clone and plan.freeze:
                    pass  # reached from the leaves and broadcast parameters (checked once by the probes)
                elif not need_clone and rec[1]._version == rec[3]:
                    if rec[1].requires_grad:
                        drivers.append(rec[1])
                elif not need_clone and rec[0].requires_grad:
                    drivers.append(rec[0])  # output changed in place: drive the backward through the input
                else:
                    need_clone = True
                if need_clone:
                    plan.clone.add(mname)
                    retry = True
        if retry:
            return y
        for rec in records:
            rec[1] = None  # outputs were only needed for the version checks (drivers hold their own references)
        threads = torch.get_num_threads()
        cpu_multi = x.device.type == "cpu" and threads > 1  # many small ops: one intra-op thread (RULE_THREADS)
        torch_kernels = seq in (seq_sqsum_torch, fisher_cpp.seq_sqsum) and vec is vec_sqsum_torch  # not Triton
        # (interpreted on CPU: stays on one thread)
        workers = resolve_workers(plan.rule_workers, threads, x.device) if torch_kernels else 0
        runner = RuleRunner(workers, RULE_THREADS if cpu_multi else threads, plan)
        try:
            grads = torch.autograd.grad(loss, drivers, allow_unused=True) if drivers else []
            runner.finish()
        finally:
            runner.close()
            runner = None
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)

        for mod, local, p, _ in subs:
            mod._parameters[local] = p
    for (_, _, full), (_, _, p, _), g in zip(plan.broadcast, subs, grads[: len(subs)]):
        if plan.probe:
            continue
        if g is None:
            g = torch.zeros(x.shape[0], *p.shape[1:], dtype=p.dtype, device=p.device)
        if plan.checked_broadcast:
            acc[full].add_(g.square().sum(0, keepdim=True).to(acc[full].dtype))
        else:
            plan.check_values[full] = (g.square().sum(0, keepdim=True), g[:1].square())
    for owner in plan.owners.values():
        if any(c[0] is None for c in owner.calls) or (not owner.done and not owner.calls and owner.rule is not None):
            failed.extend(owner.local.values())  # forward never ran (parameters used elsewhere) or odd call
        elif owner.rule is not None and not owner.done:
            run_rule(owner)
        elif owner.rule is None and owner.calls:
            if not plan.probe and any(c[4] is not None for c in owner.calls):  # else: unused, zero contribution
                _module_vjp_sqsum(owner, chunk, acc)
        elif owner.rule is None:
            failed.extend(owner.local.values())
        owner.calls.clear()
    return y, failed
