"""Forgetting Prioritized Finetuning (FPF), Zhao et al., "Does Continual Learning Equally Forget All Parameters?",
ICML 2023 (arXiv 2304.04158); no official code was found.

One FPF call fine-tunes only the selected units P (see :mod:`cl.modules.fpf_select`) on the replay buffer M:

    min_{theta_P}  E_{(x, y, z) ~ M} [ ce_weight * CE(mask(f(x)), y) + kd_beta * || f(x) - z ||_2^2 ]

(``kd_beta = 0``: FPF / k-FPF-CE; ``kd_beta > 0`` with stored logits z: k-FPF-KD, DER-style mean squared error over
all logits). Design choices (the paper's values are not public; all are config keys):

* plain SGD (``lr``, ``momentum``; ``optimizer=adam`` as an option) for ``iterations`` steps of ``batch_size``
  items drawn from the buffer (global RNG, so runs are reproducible under the engine's per-experience seeding); these
  options are one :class:`FPFOptions`, checked when the callback or method that owns them is built;
* only the selected modules are in train mode: their batch-norm running statistics adapt to the buffer, while every
  other module is in eval mode, so every parameter *and buffer* outside P is bitwise unchanged;
* logits are masked like the method's training logits (``train_logit_mask()``: classes seen so far);
* under DDP every rank trains on its own replay items (:func:`replay_sample`: its share ``[rank::W]`` of the
  1-process draw of ``batch_size`` items when W divides it, so W ranks together replay the 1-process batch; else
  ``batch_size`` items of a per-rank generator) and the gradients of P are averaged over ranks (all-reduce), so the
  ranks' weights stay identical (batch-norm running statistics of selected layers are per rank, as in DDP training);
* FLOPs of the fine-tuning (forward + backward) are counted with ``torch.utils.flop_counter``'s formulas and returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl.modules.buffer import ReservoirBuffer
from cl.modules.fpf_select import method_units

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class FPFOptions:
    """How one FPF call trains the selected units: ``iterations`` steps of ``batch_size`` buffer items, with
    ``optimizer`` (``lr``, ``momentum`` for SGD) on ``ce_weight * CE + kd_beta * MSE(logits, stored logits)``.

    Values are coerced to their types and checked at construction; ``prefix`` is how the owner's config spells the
    keys in error messages (``callbacks.fpf.`` for the callback, ``method.fpf_`` for k-FPF).
    """

    iterations: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    batch_size: int = 32
    optimizer: str = "sgd"
    kd_beta: float = 0.0
    ce_weight: float = 1.0
    prefix: InitVar[str] = "fpf."

    def __post_init__(self, prefix: str) -> None:
        for name, kind in (("iterations", int), ("batch_size", int), ("optimizer", str)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        for name in ("lr", "momentum", "kd_beta", "ce_weight"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.iterations < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"{prefix}iterations={self.iterations}, {prefix}batch_size={self.batch_size}, {prefix}lr={self.lr}; "
                "need iterations >= 0, batch_size >= 1, lr > 0"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{prefix}optimizer={self.optimizer!r}; allowed: {list(OPTIMIZERS)}")

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        return torch.optim.Adam(params, lr=self.lr)


@dataclass
class FPFResult:
    """What one FPF call did: FLOPs spent, parameters updated, and the buffer loss before/after."""

    flops: int
    params_updated: int
    loss_first: float
    loss_last: float


def fpf_finetune(
    method: nn.Module,
    buffer: ReservoirBuffer,
    units: Sequence[str],
    options: FPFOptions | None = None,
) -> FPFResult:
    """Fine-tune the units ``units`` of ``method`` on ``buffer`` with ``options`` (see the module docstring)."""
    from cl.analysis.flops import LightFlopCounter

    opts = FPFOptions() if options is None else options
    if opts.kd_beta > 0 and not buffer.stores_logits:
        raise ValueError(f"fpf.kd_beta={opts.kd_beta} needs a buffer that stores logits (k_fpf_kd / derpp)")
    all_units = method_units(method)
    missing = [u for u in units if u not in all_units]
    if missing:
        raise ValueError(f"fpf: unknown modules {missing}")
    params = [p for u in units for _, p in all_units[u].params]
    n_params = sum(p.numel() for p in params)
    if buffer.is_empty() or opts.iterations == 0 or not params:
        return FPFResult(0, n_params, float("nan"), float("nan"))

    modes = {m: m.training for m in method.modules()}
    flags = {p: p.requires_grad for p in method.parameters()}
    modules = dict(method.named_modules())
    device = next(iter(params)).device
    losses: list[float] = []
    try:
        method.eval()
        for u in units:
            owner = modules.get(u) or modules.get(u.rsplit(".", 1)[0] if "." in u else "")
            if owner is not None and not any(True for _ in owner.children()):
                owner.train()
        for p in method.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        opt = opts.make_optimizer(params)
        mask = method.train_logit_mask().clone()
        with LightFlopCounter() as counter, torch.enable_grad():
            for _ in range(opts.iterations):
                s = replay_sample(buffer, opts.batch_size)
                x, y = s.x.to(device), s.y.to(device)
                logits = method(x)
                loss = opts.ce_weight * F.cross_entropy(method.apply_mask(logits, mask), y)
                if opts.kd_beta > 0:
                    loss = loss + opts.kd_beta * F.mse_loss(logits, s.logits.to(logits))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                _average_gradients(params)
                opt.step()
                losses.append(float(loss.detach()))
        flops = int(counter.get_total_flops())
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for p in params:
            p.grad = None
        for m, mode in modes.items():
            m.train(mode)
    return FPFResult(flops, n_params, losses[0], losses[-1])


def replay_sample(buffer: ReservoirBuffer, n: int) -> Any:
    """One FPF replay batch (see the module docstring): every rank a different share, never the same draw twice."""
    from cl.engine.distributed import rank_and_world

    rank, world = rank_and_world()
    if world == 1:
        return buffer.sample(n)
    if n % world == 0:
        return buffer.sample(n, shard=True)  # the 1-process draw (global RNG, seeded alike on every rank), split
    seed = int(torch.randint(2**62, (1,)))  # the same on every rank; + rank: each rank its own stream
    return buffer.sample(n, generator=torch.Generator().manual_seed(seed + rank))


def _average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of ``params`` when a process group is running; no-op otherwise."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)
