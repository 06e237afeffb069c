"""Diagonal of the Fisher information of a classifier's categorical likelihood: ``kernels.fisher_diagonal``.

Quantities (``l_i = CE(f(x_i), y_i) = -log p(y_i | x_i)``; squares are elementwise):

* ``mode="per_sample"`` (exact empirical Fisher, Kirkpatrick et al. 2017 EWC eq. 3 / Foster et al. 2024 SSD eq. 1):
  ``F = (1/N) sum_i (d l_i / d theta)^2``.
* ``mode="batch"``: ``(1/n_b) sum_b (d/dtheta mean_{i in b} l_i)^2`` -- what the SSD reference code and Avalanche's
  EWC compute (squared batch-mean gradient, averaged over batches). Its scale depends on the batch size; SSD's
  published alpha/lambda are calibrated to it.
* ``labels="true"`` uses the dataset labels (empirical Fisher); ``labels="sampled"`` draws ``y_i ~ p(. | x_i)`` from
  the model's predictive distribution with ``generator`` (the true Fisher, Martens 2020 sec. 11).

Backends: ``reference`` = torch.func per-sample gradients (``kernels.fisher_reference``); ``fast`` = captured
activations and output gradients with exact per-layer rules (``kernels.fisher_fast``, ``kernels.fisher_rules``), the
torch.func reference for parameters no rule covers; ``auto`` = fast, with the fused Triton kernels
(``kernels.fisher_triton``) for Linear layers on CUDA float tensors; ``triton`` = fast with the Triton kernels forced
(CPU tensors need ``TRITON_INTERPRET=1``; for tests). On CPU, ``fast`` and ``auto`` run the Linear-on-sequences,
LayerNorm / RMSNorm and Conv2d rules through fused C++ kernels (``kernels.fisher_cpp``, compiled on first use; the
torch forms if they do not build).

The model is evaluated in eval mode (dropout off, BatchNorm on running statistics, so that per-sample gradients are
defined); every submodule's train/eval flag is restored afterwards, and no parameter's ``.grad`` is touched.
``rule_workers`` (fast backend, CPU, more than one intra-op thread): worker threads that run the per-layer rules
concurrently with the backward (``kernels.fisher_pool``); None = threads - 1, 0 = rules inline in the backward.
Under torch.distributed (``distributed=None`` detects it) each rank passes its own shard; sums and counts are
all-reduced once (``kernels.fisher_dist``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch

import torch
from torch import Tensor, nn

from kernels.fisher_rules import SqSum, release_scratch, seq_sqsum_torch, vec_sqsum_torch

MODES = ("per_sample", "batch")
LABELS = ("true", "sampled")
BACKENDS = ("auto", "reference", "fast", "triton")
LOSSES = ("ce",)


@dataclass
class FisherResult:
    """``diag[name]`` is shaped like the parameter; ``n_samples`` counts samples over all ranks."""

    diag: dict[str, Tensor]
    n_samples: int
    mode: str
    labels: str = "true"
    n_batches: int = 0
    fallback: tuple[str, ...] = ()  # parameters the fast backend left to the torch.func reference


# model -> {broadcast parameter key: did the broadcast rule pass its check}. The check (one batch-of-one autograd pass
# on sample 0, 5-15 ms on the 2-12-block transformers of experiments/bench/fisher_family.py, 2-5 % of a 2-3-batch call)
# asks whether any sample's loss reaches another sample's copy of the parameter: a property of the model's forward,
# not of its weights, so a verdict is kept for the model object (weakly) across calls. Kept only for calls without
# forward_fn (a new function may couple samples) and from a check batch of at least two samples (with one sample every
# model passes); keyed by the parameter's name, shape, dtype and device. ``clear_broadcast_cache`` forgets them.
_BROADCAST_VERDICTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, bool]] = weakref.WeakKeyDictionary()


def clear_broadcast_cache() -> None:
    """Forget every kept broadcast-rule verdict (e.g. after patching a model's forward)."""
    _BROADCAST_VERDICTS.clear()


def _broadcast_key(mod: nn.Module, local: str, full: str) -> tuple:
    p = mod._parameters[local]
    return full, tuple(p.shape), p.dtype, p.device


def _apply_verdicts(plan, model: nn.Module) -> None:  # noqa: ANN001
    """Before the first batch: parameters with a kept verdict skip the check (passed) or go to the reference (failed);
    the check runs only when some broadcast parameter has none."""
    known = _BROADCAST_VERDICTS.get(model)
    if not known or not plan.broadcast:
        return
    verdicts = [known.get(_broadcast_key(*b)) for b in plan.broadcast]
    plan.fallback.extend(b[2] for b, v in zip(plan.broadcast, verdicts) if v is False)
    plan.broadcast = [b for b, v in zip(plan.broadcast, verdicts) if v is not False]
    plan.checked_broadcast = all(v is True for v in verdicts)


def _check(key: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"fisher_diagonal: {key}={value!r} is not one of {list(allowed)}")


def _positive(key: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"fisher_diagonal: {key}={value!r} must be a positive int or None")


def select_parameters(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """Names of trainable parameters matching ``layers`` (name prefixes at a '.' boundary, or fnmatch patterns)."""
    if isinstance(layers, str):
        layers = [layers]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if layers is not None:
        names = [n for n in names if any(n == pat or n.startswith(pat + ".") or fnmatch(n, pat) for pat in layers)]
    if not names:
        raise ValueError(f"fisher_diagonal: layers={layers!r} selects no parameter with requires_grad")
    return names


def _sqsum_kernels(backend: str, device: torch.device) -> tuple[SqSum, SqSum]:
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        try:
            from kernels import fisher_triton
        except ImportError:
            if backend == "triton":
                raise
            return seq_sqsum_torch, vec_sqsum_torch
        return fisher_triton.seq_sqsum, fisher_triton.vec_sqsum
    if device.type == "cpu" and backend in ("auto", "fast"):
        from kernels import fisher_cpp

        if fisher_cpp.available():  # fused C++ sequence product (else one warning and the torch form)
            return fisher_cpp.seq_sqsum, vec_sqsum_torch
    return seq_sqsum_torch, vec_sqsum_torch


def fisher_diagonal(
    model: nn.Module,
    data: Iterable,
    *,
    mode: str = "per_sample",
    labels: str = "true",
    chunk: int | None = None,
    layers: Sequence[str] | None = None,
    forward_fn: Callable[[Tensor], Tensor] | None = None,
    loss: str = "ce",
    max_batches: int | None = None,
    backend: str = "auto",
    generator: torch.Generator | None = None,
    distributed: bool | None = None,
    rule_workers: int | None = None,
) -> FisherResult:
    """Fisher diagonal of ``model`` over ``data`` (batches ``(x, y, *rest)``); see the module docstring."""
    _check("mode", mode, MODES)
    _check("labels", labels, LABELS)
    _check("backend", backend, BACKENDS)
    _check("loss", loss, LOSSES)
    _positive("chunk", chunk)
    _positive("max_batches", max_batches)
    if rule_workers is not None and (
        not isinstance(rule_workers, int) or isinstance(rule_workers, bool) or rule_workers < 0
    ):
        raise ValueError(f"fisher_diagonal: rule_workers={rule_workers!r} must be an int >= 0 or None")
    from kernels import fisher_dist, fisher_fast, fisher_reference

    names = select_parameters(model, layers)
    params = dict(model.named_parameters())
    device = params[names[0]].device
    sums = {n: torch.zeros_like(params[n], dtype=torch.promote_types(params[n].dtype, torch.float32)) for n in names}
    n_samples = n_batches = 0
    seq, vec = _sqsum_kernels(backend, device)
    plan = (
        fisher_fast.make_plan(model, names, rule_workers) if mode == "per_sample" and backend != "reference" else None
    )
    if plan is not None and forward_fn is None:
        _apply_verdicts(plan, model)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for bi, batch in enumerate(data):
            if max_batches is not None and bi >= max_batches:
                break
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("fisher_diagonal: each batch must be (x, y, *rest); got " + type(batch).__name__)
            x, y = batch[0].to(device), batch[1].to(device)
            if x.shape[0] == 0:
                continue
            if labels == "sampled" and plan is None:
                with torch.no_grad():
                    y = fisher_reference.sample_labels(model(x) if forward_fn is None else forward_fn(x), generator)
            if plan is not None:
                y_fast = y if labels == "true" else None
                _fast_part(plan, model, forward_fn, x, y_fast, generator, chunk, seq, vec, sums)
            else:
                if mode == "batch":
                    with torch.enable_grad():
                        part = fisher_reference.batch_sqgrad(model, forward_fn, x, y, names)
                else:
                    part = fisher_reference.per_sample_sqsum(model, forward_fn, x, y, names, chunk)
                for n, v in part.items():
                    sums[n].add_(v.to(sums[n].dtype))
            n_samples += x.shape[0]
            n_batches += 1
    finally:
        _restore_flags(model, flags)
        release_scratch()
        if plan is not None and plan.pool is not None:
            plan.pool.close()
            plan.pool = None
    if fisher_dist.is_distributed(distributed):
        sums, (n_samples, n_batches) = fisher_dist.all_reduce_sums(sums, [n_samples, n_batches])
    if n_samples == 0:
        raise ValueError("fisher_diagonal: data yielded no samples (check data / max_batches)")
    denom = n_samples if mode == "per_sample" else n_batches
    fallback = tuple(sorted(plan.fallback)) if plan is not None else ()
    return FisherResult({n: s / denom for n, s in sums.items()}, n_samples, mode, labels, n_batches, fallback)


def _restore_flags(model: nn.Module, flags: list[tuple[nn.Module, bool]]) -> None:
    """Every module's train/eval flag as before: one recursive ``model.train`` with the root's flag, then ``train`` on
    the (few) modules whose flag differs, parents before children (``modules()`` order). Calling ``train`` on every
    module re-walked each subtree (quadratic in depth; a 12-block timm ViT, with the ``model.eval()`` before: 13 ms
    per call, now 5 ms)."""
    model.train(flags[0][1])
    for m, flag in flags[1:]:
        if m.training != flag:
            m.train(flag)


def _fast_part(plan, model, forward_fn, x, y, generator, chunk, seq, vec, sums) -> None:  # noqa: ANN001
    """One batch of the fast backend, added into ``sums``; the reference covers what the rules could not."""
    from kernels import fisher_fast, fisher_reference

    if plan.drive_decided:
        y, failed = fisher_fast.fast_batch(plan, model, forward_fn, x, y, generator, chunk, seq, vec, sums)
    else:  # can the backward run frozen (kernels.fisher_fast, 2.)? the first batch tries it
        plan.drive_decided = plan.freeze = True
        y, failed = fisher_fast.fast_batch(plan, model, forward_fn, x, y, generator, chunk, seq, vec, sums)
        if not plan.captured <= plan.fired:  # a captured layer got no gradient: the probes decide, batch again
            for v in sums.values():
                v.zero_()  # the first batch of the call: the sums held nothing else
            plan.check_values.clear()
            _probe_drive(plan, model, forward_fn, x, chunk, seq, vec)
            y, failed = fisher_fast.fast_batch(plan, model, forward_fn, x, y, generator, chunk, seq, vec, sums)
    if plan.broadcast and not plan.checked_broadcast:  # one-time check of the broadcast rule on sample 0
        # sample 0's row of the batch gradient is dl_0/dP_0 + sum_{j>0} dl_j/dP_0, its true gradient is
        # sum_j dl_0/dP_j: they agree when no sample's loss reaches another sample's copy (e.g. a model reading p[0]
        # gives all the batch's gradient to row 0 and none to the others: both directions fail the comparison)
        plan.checked_broadcast = True
        names = [full for _, _, full in plan.broadcast]
        ref = _per_sample_autograd(model, forward_fn, x[:1], y[:1], names)
        keep = forward_fn is None and x.shape[0] >= 2  # a verdict worth keeping for later calls (_BROADCAST_VERDICTS)
        verdicts = _BROADCAST_VERDICTS.setdefault(model, {}) if keep else {}
        for entry in list(plan.broadcast):
            full = entry[2]
            total, first = plan.check_values.pop(full)
            scale = float(ref[full].abs().max())  # float32 sums of squares: elements near 0 differ by ~1e-5*max
            ok = torch.allclose(first.to(ref[full].dtype), ref[full], rtol=1e-3, atol=1e-4 * scale + 1e-12)
            verdicts[_broadcast_key(*entry)] = ok
            if ok:
                sums[full].add_(total.to(sums[full].dtype))
            else:
                plan.broadcast = [b for b in plan.broadcast if b[2] != full]
                failed.append(full)
    for full in failed:
        if full not in plan.fallback:
            plan.fallback.append(full)
    for mname, owner in list(plan.owners.items()):  # stop capturing what the reference now covers
        owner.local = {lc: full for lc, full in owner.local.items() if full not in plan.fallback}
        if not owner.local:
            del plan.owners[mname]
    if plan.fallback:
        for n, v in fisher_reference.per_sample_sqsum(model, forward_fn, x, y, sorted(plan.fallback), chunk).items():
            sums[n].add_(v.to(sums[n].dtype))


def _probe_drive(plan, model, forward_fn, x, chunk, seq, vec) -> None:  # noqa: ANN001
    """Two 2-sample probes without rules: ``plan.freeze`` if the frozen drive reaches the layers that driving through
    every layer output reaches. Only when the frozen first batch left a captured layer without a gradient (an input
    that needs a gradient for a reason outside the model, or a layer whose output the loss does not use); when every
    captured layer fired, the frozen drive reached all of them and the probes are not run (they cost 5-20 % of a
    small transformer's batch)."""
    from kernels import fisher_fast

    nothing: dict[str, torch.Tensor] = {}  # probes compute no rule: they add nothing
    y_probe = torch.zeros(min(2, x.shape[0]), dtype=torch.long, device=x.device)
    plan.probe = True
    try:
        plan.freeze = False
        fisher_fast.fast_batch(plan, model, forward_fn, x[:2], y_probe, None, chunk, seq, vec, nothing)
        reached = set(plan.fired)
        plan.freeze = True
        fisher_fast.fast_batch(plan, model, forward_fn, x[:2], y_probe, None, chunk, seq, vec, nothing)
        plan.freeze = plan.fired == reached
    finally:
        plan.probe = False


def _per_sample_autograd(model, forward_fn, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> dict:  # noqa: ANN001
    """``sum_i (d l_i / d theta)^2`` over the few samples of ``x`` by one plain autograd pass per sample (batch of
    one, as the torch.func reference evaluates each sample): the one-time check of the broadcast rule. Same values
    as ``fisher_reference.per_sample_sqsum`` without the vmap's fixed overhead (on a 2-block timm ViT at batch 64,
    each check pass costs ~5 % of a 4-batch call; one sample is checked)."""
    import torch.nn.functional as F

    params = dict(model.named_parameters())
    ps = [params[n] for n in names]
    out = {n: torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for n, p in zip(names, ps)}
    for i in range(x.shape[0]):
        with torch.enable_grad():
            logits = model(x[i : i + 1]) if forward_fn is None else forward_fn(x[i : i + 1])
            loss = F.cross_entropy(logits, y[i : i + 1], reduction="sum")
            grads = torch.autograd.grad(loss, ps, allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                out[n].add_(g.detach().to(out[n].dtype).square())
    return out
