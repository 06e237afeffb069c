"""Training-cost accounting: FLOPs (forward + backward) and the number of parameters updated, as FPF/k-FPF
(Zhao et al., ICML 2023) compare methods on cost.

FLOPs are counted with the formulas of ``torch.utils.flop_counter`` (:class:`cl.analysis.flops.LightFlopCounter`;
matmuls, convolutions, attention: the ops that dominate; element-wise ops and norms count 0, as in the usual FLOP
tables) over the whole Lightning ``fit`` of every experience: every training step with its replay forward passes and
backward pass, plus anything a method does inside ``fit`` (k-FPF's triggers). Work done after ``fit`` by objects that
expose ``extra_train_flops()`` (the FPF callback) is added. Not counted: evaluation, and post-``fit`` method hooks
without ``extra_train_flops`` (EWC's Fisher).

Metrics (``metrics.json``): ``flops`` (total training FLOPs of the run so far), ``flops_fit`` (inside ``fit``),
``params_updated`` (the largest number of parameters the Lightning optimizer updated at one step), and
``param_updates`` (sum over optimizer steps of the parameters updated). Under DDP each rank counts its own work and
the totals are multiplied by the world size (ranks do equal work by construction of the distributed sampler).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback


class FlopCounter(Callback):
    """Counts training FLOPs across the whole run (see the module docstring)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.flops_fit = 0
        self.params_updated = 0
        self.param_updates = 0
        self._mode: Any = None
        self._extra_sources: list[Any] = []

    # ------------------------------------------------------------------------------------------- lightning hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.enabled:
            return
        from cl.analysis.flops import LightFlopCounter

        self._mode = LightFlopCounter()
        self._mode.__enter__()

    def _stop(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
            self.flops_fit += int(mode.get_total_flops()) * _world_size()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        n = sum(p.numel() for g in optimizer.param_groups for p in g["params"] if p.grad is not None)
        self.params_updated = max(self.params_updated, n)
        self.param_updates += n * _world_size()

    # ------------------------------------------------------------------------------------------- engine hooks
    def on_experience_end(self, runner: Any, experience: Any) -> None:
        sources = [runner.method, *runner.callbacks.values()]
        self._extra_sources = [s for s in sources if s is not self and hasattr(s, "extra_train_flops")]

    def report_metrics(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        extra = sum(int(s.extra_train_flops()) for s in self._extra_sources)
        return {
            "flops": self.flops_fit + extra,
            "flops_fit": self.flops_fit,
            "params_updated": self.params_updated,
            "param_updates": self.param_updates,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"flops_fit": self.flops_fit, "params_updated": self.params_updated, "param_updates": self.param_updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.flops_fit = int(state_dict["flops_fit"])
        self.params_updated = int(state_dict["params_updated"])
        self.param_updates = int(state_dict["param_updates"])


def _world_size() -> int:
    import torch

    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
