"""Run-long callback writing the module-sensitivity table and plot (``sensitivity.csv``/``sensitivity.png`` in the run
directory) after every experience; the analysis itself is :mod:`cl.analysis.sensitivity` (Zhao et al., ICML 2023)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from cl.analysis.sensitivity import SensitivityTracker


class SensitivityCallback(Callback):
    """Snapshots the method's units before training and after every experience; see the analysis module."""

    def __init__(
        self, normalization: str = "spec", include_init: bool = False, plot: bool = True, report_top: int = 5
    ) -> None:
        self.tracker = SensitivityTracker(normalization=normalization, include_init=include_init)
        self.plot, self.report_top = plot, report_top

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker.prev is None:
            self.tracker.record(pl_module, -1)

    def on_experience_end(self, runner: Any, experience: Any) -> None:
        from cl.engine.loop import is_global_zero

        self.tracker.record(runner.method, int(experience.index))
        if is_global_zero():
            self.tracker.write(runner.run_dir, plot=self.plot)

    def report_metrics(self) -> dict[str, Any]:
        return {"sensitivity_top": self.tracker.ranking()[: self.report_top]}

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)
