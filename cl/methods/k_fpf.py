"""k-FPF (Zhao et al., "Does Continual Learning Equally Forget All Parameters?", ICML 2023, arXiv 2304.04158; no
official code was found): plain SGD on the stream with no per-step replay, a reservoir buffer updated at every step,
and FPF (:func:`cl.modules.fpf.fpf_finetune`) triggered k times at even intervals over the whole run, regardless of
experience boundaries.

Schedule: with N the total number of training steps of the run, trigger i (1..k) fires right after global step
floor(i * N / k) (1-based), so the last trigger follows the last step. N is planned when training starts from the
stream's experience sizes, the loader's batch size, ``trainer.max_epochs`` and ``trainer.limit_train_batches`` (as
Lightning counts batches), checked against Lightning's own count for each experience, and kept in the state (a
resumed run keeps its schedule); ``total_steps`` overrides it. Variants: k-FPF-CE (``kd=false``: CE on the buffer)
and k-FPF-KD (``kd=true``: the buffer also stores the logits the model produced when each item entered, and FPF adds
``fpf_kd_beta * ||f(x) - z||^2``; beta is not given in the paper, ours is a config value).

Design choices: ``modules`` is ``default`` or patterns (``auto`` is for the post-hoc FPF callback, which sees
experience ends); FPF uses its own SGD (``fpf_lr``, ``fpf_iterations``, ``fpf_batch_size``) and leaves the stream
optimizer's state untouched; FPF runs inside Lightning's ``fit``, so the run's FLOP counter counts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl.data.stream import Stream
from cl.methods.base import ContinualMethod
from cl.modules.buffer import ReservoirBuffer
from cl.modules.fpf import FPFOptions, fpf_finetune
from cl.modules.fpf_select import resolve_selection


def batches_per_epoch(n_items: int, batch_size: int, limit: int | float | None, drop_last: bool = False) -> int:
    """Training batches Lightning runs per epoch for ``n_items`` with ``trainer.limit_train_batches=limit``."""
    n = n_items // batch_size if drop_last else math.ceil(n_items / batch_size)
    if limit is None:
        return n
    if isinstance(limit, int):
        return min(n, limit)
    return int(n * float(limit))


def trigger_steps(total_steps: int, k: int) -> list[int]:
    """The 1-based global steps after which the k triggers fire: floor(i * N / k), i = 1..k."""
    if k < 1 or k > total_steps:
        raise ValueError(f"method.k={k}; allowed: 1..{total_steps} (the run has {total_steps} training steps)")
    return [(i * total_steps) // k for i in range(1, k + 1)]


class KFPF(ContinualMethod):
    """k-FPF(-CE / -KD): SGD on the stream, FPF on the buffer k times over the run."""

    SCENARIOS: ClassVar[tuple[str, ...]] = ("class", "domain")

    def __init__(
        self,
        *args: Any,
        k: int = 10,
        buffer_size: int = 200,
        input_shape: Sequence[int] = (1, 16, 16),
        buffer_seed: int = 0,
        kd: bool = False,
        modules: str | Sequence[str] = "default",
        fpf_iterations: int = 50,
        fpf_lr: float = 0.05,
        fpf_momentum: float = 0.0,
        fpf_batch_size: int = 32,
        fpf_optimizer: str = "sgd",
        fpf_kd_beta: float = 0.5,
        total_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if int(k) < 1:
            raise ValueError(f"method.k={k}; must be a positive integer")
        if modules == "auto":
            raise ValueError("method.modules='auto' is not supported by k_fpf; allowed: 'default' or patterns")
        self.k = int(k)
        self.kd = bool(kd)
        self.selection = modules if isinstance(modules, str) else [str(m) for m in modules]
        self.fpf_opts = FPFOptions(
            iterations=fpf_iterations, lr=fpf_lr, momentum=fpf_momentum, batch_size=fpf_batch_size,
            optimizer=fpf_optimizer, kd_beta=fpf_kd_beta if self.kd else 0.0, prefix="method.fpf_",
        )  # fmt: skip
        self.buffer = ReservoirBuffer(
            buffer_size, input_shape, num_logits=self.num_classes if kd else 0, seed=buffer_seed
        )
        self.register_buffer("run_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.tensor(int(total_steps or 0)))
        self.register_buffer("triggers_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("fpf_flops", torch.zeros((), dtype=torch.long))
        self.register_buffer("trigger_at", torch.full((self.k,), -1, dtype=torch.long))  # global step of each trigger
        self._train_sizes: list[int] = []
        self._stream_logits: torch.Tensor | None = None
        self._selected: list[str] = []

    def setup_stream(self, stream: Stream) -> None:
        super().setup_stream(stream)
        self._train_sizes = [len(self.train_dataset(e, stream)) for e in stream.experiences]

    # ------------------------------------------------------------------------------------------- schedule
    def on_train_start(self) -> None:
        trainer = self.trainer
        loader = trainer.train_dataloader
        # the global batch: under DDP each rank loads batch_size / W of the whole experience (cl/engine/distributed.py)
        batch_size = int(getattr(loader, "batch_size", 0) or 0) * max(1, int(trainer.world_size))
        limit = trainer.limit_train_batches
        limit = None if limit == 1.0 else limit
        epochs = int(trainer.max_epochs)
        drop_last = bool(getattr(loader, "drop_last", False))
        plan = [batches_per_epoch(n, batch_size, limit, drop_last) * epochs for n in self._train_sizes]
        t = int(self.experience_index)
        if plan and int(trainer.num_training_batches) * epochs != plan[t] and int(self.total_steps) == 0:
            raise RuntimeError(
                f"k_fpf planned {plan[t]} steps for experience {t} but Lightning runs "
                f"{int(trainer.num_training_batches) * epochs}; set method.total_steps explicitly"
            )
        if int(self.total_steps) == 0:
            self.total_steps.fill_(sum(plan))
        self._schedule = trigger_steps(int(self.total_steps), self.k)

    # ------------------------------------------------------------------------------------------- training
    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        logits = self(x)
        self._stream_logits = logits.detach()
        return F.cross_entropy(self.apply_mask(logits, self.train_logit_mask()), y)

    def on_train_batch_end(self, outputs: Any, batch: Sequence[Any], batch_idx: int) -> None:
        logits = self._stream_logits if self.kd else None
        self.buffer.add(batch[0].detach(), batch[1].detach(), self.experience_index, logits)
        self._stream_logits = None
        self.run_step += 1
        step, done = int(self.run_step), int(self.triggers_done)
        while done < self.k and self._schedule[done] == step:
            self.trigger()
            done = int(self.triggers_done)

    def trigger(self) -> None:
        """One FPF call on the buffer (recorded in ``triggers_done`` and ``trigger_at``)."""
        if not self._selected:
            self._selected = resolve_selection(self, self.selection, key="method.modules")
        result = fpf_finetune(self, self.buffer, self._selected, self.fpf_opts)
        self.fpf_flops += result.flops
        self.trigger_at[int(self.triggers_done)] = self.run_step
        self.triggers_done += 1

    def report_metrics(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "fpf_triggers": int(self.triggers_done),
            "fpf_trigger_steps": [int(s) for s in self.trigger_at if int(s) >= 0],
            "fpf_flops": int(self.fpf_flops),
            "fpf_modules": list(self._selected),
            "fpf_params_updated": sum(p.numel() for _, p in self._selected_params()),
            "total_steps": int(self.total_steps),
        }

    def _selected_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        from cl.modules.fpf_select import selected_parameters

        return selected_parameters(self, self._selected) if self._selected else []
