"""FPF as a switch on any method (Zhao et al., "Does Continual Learning Equally Forget All Parameters?", ICML 2023):
after the method's own training, fine-tune only the selected modules on the replay buffer
(:func:`cl.modules.fpf.fpf_finetune`; enable with ``+callbacks=fpf`` or a preset).

Design choices (config keys of ``conf/callbacks/fpf.yaml``):

* ``when``: ``last`` (the spec: once, after the last experience, "at the end of any CL method") or
  ``every_experience`` (after each experience's training, before its evaluation; later experiences then train on
  from the fine-tuned weights);
* the buffer: the method's own ``buffer`` (ER, DER++, k-FPF) when it has one, otherwise the callback keeps its own
  reservoir (``buffer_size``, ``buffer_seed``) filled with every training batch and checkpointed in its
  ``state_dict`` (so ``finetune + fpf`` works);
* ``modules``: patterns | ``default`` | ``auto`` (:mod:`cl.modules.fpf_select`); ``auto`` keeps its own
  :class:`~cl.analysis.sensitivity.SensitivityTracker`, records it at each experience end *before* fine-tuning, and
  picks the ``top`` highest-scoring units;
* FLOPs and parameters of the fine-tuning are reported (``fpf_flops``, ``fpf_params_updated``) and added to the run's
  ``flops`` through ``extra_train_flops()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.callbacks import Callback

from cl.analysis.sensitivity import SensitivityTracker
from cl.modules.buffer import ReservoirBuffer
from cl.modules.fpf import FPFOptions, fpf_finetune
from cl.modules.fpf_select import SELECTION_MODES, resolve_selection

WHEN = ("last", "every_experience")


class FPFCallback(Callback):
    """Post-hoc Forgetting Prioritized Finetuning (see the module docstring)."""

    def __init__(
        self,
        modules: str | Sequence[str] = "default",
        when: str = "last",
        iterations: int = 100,
        lr: float = 0.05,
        momentum: float = 0.0,
        batch_size: int = 32,
        optimizer: str = "sgd",
        kd_beta: float = 0.0,
        top: int = 5,
        buffer_size: int = 200,
        buffer_seed: int = 0,
        normalization: str = "spec",
    ) -> None:
        if when not in WHEN:
            raise ValueError(f"callbacks.fpf.when={when!r}; allowed: {list(WHEN)}")
        if not isinstance(modules, str):
            modules = [str(m) for m in modules]
        elif modules not in ("default", "auto"):
            raise ValueError(f"callbacks.fpf.modules={modules!r}; allowed: {list(SELECTION_MODES)}")
        self.modules, self.when, self.top = modules, when, int(top)
        self.opts = FPFOptions(
            iterations=iterations, lr=lr, momentum=momentum, batch_size=batch_size, optimizer=optimizer,
            kd_beta=kd_beta, prefix="callbacks.fpf.",
        )  # fmt: skip
        self.buffer_size, self.buffer_seed = int(buffer_size), int(buffer_seed)
        self.own_buffer: ReservoirBuffer | None = None
        self.tracker = SensitivityTracker(normalization=normalization) if modules == "auto" else None
        self.flops = 0
        self.params_updated = 0
        self.triggers = 0
        self.selected: list[str] = []
        self.loss_before_after: list[float] = []

    # ------------------------------------------------------------------------------------------- data
    @staticmethod
    def method_buffer(method: Any) -> ReservoirBuffer | None:
        buf = getattr(method, "buffer", None)
        return buf if isinstance(buf, ReservoirBuffer) else None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker is not None and self.tracker.prev is None:
            self.tracker.record(pl_module, -1)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.method_buffer(pl_module) is not None:
            return
        x, y = batch[0], batch[1]
        if self.own_buffer is None:
            self.own_buffer = ReservoirBuffer(self.buffer_size, tuple(x.shape[1:]), seed=self.buffer_seed)
        self.own_buffer.add(x.detach().cpu(), y.detach().cpu(), int(pl_module.experience_index))

    # ------------------------------------------------------------------------------------------- FPF
    def on_experience_end(self, runner: Any, experience: Any) -> None:
        method = runner.method
        if self.tracker is not None:
            self.tracker.record(method, int(experience.index))
        if self.when == "last" and int(experience.index) != len(runner.stream) - 1:
            return
        buffer = self.method_buffer(method) or self.own_buffer
        if buffer is None or buffer.is_empty():
            return
        scores = self.tracker.scores() if self.tracker is not None else None
        self.selected = resolve_selection(method, self.modules, scores, self.top, key="callbacks.fpf.modules")
        result = fpf_finetune(method, buffer, self.selected, self.opts)
        self.flops += result.flops
        self.params_updated = max(self.params_updated, result.params_updated)
        self.triggers += 1
        self.loss_before_after = [result.loss_first, result.loss_last]

    def extra_train_flops(self) -> int:
        return self.flops

    def report_metrics(self) -> dict[str, Any]:
        return {
            "fpf_flops": self.flops,
            "fpf_params_updated": self.params_updated,
            "fpf_triggers": self.triggers,
            "fpf_modules": list(self.selected),
            "fpf_buffer_loss": list(self.loss_before_after),
        }

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "own_buffer": None if self.own_buffer is None else self.own_buffer.state_dict(),
            "tracker": None if self.tracker is None else self.tracker.state_dict(),
            "flops": self.flops,
            "params_updated": self.params_updated,
            "triggers": self.triggers,
            "selected": list(self.selected),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        own = state_dict.get("own_buffer")
        if own is not None:
            self.own_buffer = ReservoirBuffer(self.buffer_size, tuple(own["x"].shape[1:]), seed=self.buffer_seed)
            self.own_buffer.load_state_dict(own)
        if self.tracker is not None and state_dict.get("tracker") is not None:
            self.tracker.load_state_dict(state_dict["tracker"])
        self.flops = int(state_dict["flops"])
        self.params_updated = int(state_dict["params_updated"])
        self.triggers = int(state_dict["triggers"])
        self.selected = list(state_dict["selected"])
