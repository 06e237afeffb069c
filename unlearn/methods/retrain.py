"""``retrain``: the gold standard. Start again from the run's initial weights (``checkpoints/initial.ckpt``) and
replay the original recipe (the same method, trainer, seeds and experience order, through ``cl.engine.loop``'s
``StreamRunner``) on experiences ``0..t`` with every forget sample removed. The retrained run is a complete ``cl.run``
run directory (``retrain_run/`` inside the unlearning run directory). Its time is the runner's training time
(fit + the method's end-of-experience hook), without the per-experience evaluations.
"""

from __future__ import annotations

from torch import nn
from torch.utils.data import Subset

from unlearn.methods.base import UnlearningMethod, UnlearnTask


def retain_stream(stream: object, t: int, forget: list[tuple[int, int]]) -> object:
    """Experiences ``0..t`` of ``stream`` with the ``forget`` keys taken out of their training data."""
    from cl.data.stream import Experience, Stream

    fs = set(forget)
    exps = []
    for e in range(t + 1):
        exp = stream.experiences[e]
        keep = [k for k, i in enumerate(exp.train_indices) if (e, int(i)) not in fs]
        idx = [exp.train_indices[k] for k in keep]
        exps.append(
            Experience(e, exp.classes, exp.task_label, Subset(exp.train, keep), exp.test, idx, exp.test_indices)
        )
    return Stream(stream.scenario, exps, stream.num_classes, stream.class_order, stream.source)


class Retrain(UnlearningMethod):
    """Retrain from the initial weights on the retain data with the original recipe."""

    needs_initial_weights = True

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        from cl.engine.loop import StreamRunner
        from unlearn.context import load_initial_weights

        method = load_initial_weights(task.ctx)
        stream = retain_stream(task.ctx.stream, task.ctx.experience, task.split.forget_train)
        runner = StreamRunner(task.ctx.cfg, method, stream, task.work_dir / "retrain_run")
        runner.run()
        self.info = {"method_seconds": runner.train_seconds, "retrain_run": str(task.work_dir / "retrain_run")}
        return runner.method
