"""Reference runs on the same stream, reported beside the main run: the offline default (CODA-Prompt on digits)
compares itself with sequential fine-tuning (the lower bound), SimpleCIL (what the frozen backbone gives with no
training) and a linear probe (CODA's head and class masking without prompts), so its end-of-run summary states every
method's final average accuracy, forgetting and CODA-Prompt's F_N.

:class:`ReferenceRun` is a run-long callback (``callbacks.<name>`` in a preset). When the main run has evaluated its
last experience, it builds the reference method from its own config on the same data, scenario, backbone and seed
(``cl.experiment.build``, so the class order is the same; checked), runs the whole stream in
``<run_dir>/<subdir>/`` (a normal run directory: metrics.json, acc_matrix.csv, checkpoints), prints a comparison
table and adds ``reference`` (``{name: {avg_acc, forgetting, forgetting_fn, ...}}``) to the main ``metrics.json``.
Several ``ReferenceRun`` callbacks in one run share that table and that key: each reports the results of all of
them so far (in ``callbacks`` order), and the last one prints one table with every method once all have run.
The reference's training time is not counted in the main run's ``seconds``. The result is kept in the callback's
state, so a resumed run does not redo it. Under DDP (``trainer=ddp_cpu``) every rank runs the reference stream, as the
main one (its fits and evaluations are collectives); rank 0 alone writes and prints. ``callbacks.<name>=null`` turns
it off.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

REPORTED = ("avg_acc", "forgetting", "forgetting_fn", "avg_inc_acc", "bwt", "seconds")


class ReferenceRun(Callback):
    """Run ``method`` (a method config, e.g. finetune) on the same stream after the main run; report both."""

    def __init__(self, method: Any, subdir: str = "reference", enabled: bool = True) -> None:
        super().__init__()
        from omegaconf import OmegaConf

        self.method_cfg = OmegaConf.create(OmegaConf.to_container(method, resolve=False))
        if not self.method_cfg.get("_target_"):
            raise ValueError(f"callbacks.<reference>.method needs a _target_; got {method!r}")
        self.subdir = subdir
        self.enabled = enabled
        self.result: dict[str, Any] | None = None
        self._runner: Any = None
        self._last: int = -1

    @property
    def state_key(self) -> str:
        """Unique per reference (its subdir), so Lightning checkpoints several of them side by side."""
        return self._generate_state_key(subdir=self.subdir)

    def on_experience_end(self, runner: Any, experience: Any) -> None:
        self._runner, self._last = runner, int(experience.index)

    def state_dict(self) -> dict[str, Any]:
        return {"result": self.result}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.result = state_dict.get("result")

    def report_metrics(self) -> dict[str, Any]:
        runner = self._runner
        done = runner is not None and self._last == len(runner.stream) - 1
        ran = False
        if self.enabled and done and self.result is None:
            self.result = self._run(runner)  # every DDP rank runs it: its trainers and evaluations are collectives
            ran = True
        peers = self._peers(runner)
        results = {name: m for cb in peers if cb.result for name, m in cb.result.items()}
        if ran and peers[-1] is self:  # the last reference of the run prints every method once
            from cl.engine.loop import is_global_zero

            if is_global_zero():
                self._print(runner, results, peers)
        return {"reference": results} if results else {}

    def _peers(self, runner: Any) -> list[ReferenceRun]:
        """The enabled ``ReferenceRun`` callbacks of the run in ``callbacks`` order (only this one without a runner)."""
        callbacks = getattr(runner, "callbacks", None) or {}
        found = [cb for cb in callbacks.values() if isinstance(cb, ReferenceRun) and cb.enabled]
        return found if self in found else [self]

    def _run(self, runner: Any) -> dict[str, Any]:
        from omegaconf import OmegaConf, open_dict

        from cl.engine.loop import StreamRunner
        from cl.experiment import build

        cfg = OmegaConf.create(OmegaConf.to_container(runner.cfg, resolve=True))
        with open_dict(cfg):
            cfg.method = self.method_cfg
            cfg.callbacks = {}
            cfg.resume = None
        stream, method = build(cfg)
        if stream.class_order != runner.stream.class_order:
            raise RuntimeError("the reference stream's class order differs from the main run's")
        metrics = StreamRunner(cfg, method, stream, runner.run_dir / self.subdir).run()
        name = str(metrics.get("method", self.method_cfg.get("name", "reference")))
        return {name: {k: metrics[k] for k in REPORTED if k in metrics}}

    def _print(self, runner: Any, results: dict[str, Any], peers: list[ReferenceRun]) -> None:
        from rich.console import Console
        from rich.table import Table

        from cl.metrics import compute_metrics

        main = compute_metrics(runner.R)
        title = f"{runner.method.method_name} vs reference{'s' if len(results) > 1 else ''} on the same stream"
        table = Table(title=f"{title} ({len(runner.stream)} exp.)")
        for col in ("method", "final avg acc A_T (%)", "forgetting F_T (%)", "CODA F_N (%)"):
            table.add_column(col, justify="right" if col != "method" else "left")
        rows = {runner.method.method_name: main, **results}
        for name, m in rows.items():
            table.add_row(name, *(f"{100 * m[k]:.2f}" for k in ("avg_acc", "forgetting", "forgetting_fn")))
        Console().print(table)
        for cb in peers:
            print(f"reference run directory: {runner.run_dir / cb.subdir}")
