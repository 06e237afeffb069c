"""``retrain``: the gold standard. Start again from the run's initial weights (``checkpoints/initial.ckpt``) and
replay the original recipe (the same method, trainer, seeds and experience order, through ``cl.engine.loop``'s
``StreamRunner``) on experiences ``0..t`` with every forget sample removed. The retrained run is a complete ``cl.run``
run directory (``retrain_run/`` inside the unlearning run directory).

What is replayed and what is timed: the recipe is the method with its training-time callbacks (e.g. the FPF
fine-tuning); callbacks that only *measure* a run are not part of it and are removed from the replayed config
(``skip_callbacks``, by ``_target_``: the FLOP counter, which wraps every training op in a dispatch mode, and the
``coda_digits`` preset's comparison runs, ``ReferenceRun``: finetune, SimpleCIL, linear probe, each a second training
run on the same stream). The reported
time is the runner's training time: ``fit`` plus the method's and the remaining callbacks' end-of-experience hooks,
summed over the experiences, without the per-experience evaluations, checkpoint writes and reports.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.utils.data import Subset

from unlearn.methods.base import UnlearningMethod, UnlearnTask

# trainers of older checkpoints that no longer exist -> their replacement (the lean CPU loop was removed in favour of
# Lightning's Trainer on every device, with the same settings: conf/trainer/cpu.yaml)
REMOVED_TRAINERS = {"cl.engine.lean.LeanTrainer": "lightning.pytorch.Trainer"}
# run-long callbacks that only measure the run (cl/callbacks/flops.py, cl/modules/prompt_reference.py)
MEASUREMENT_CALLBACKS = ("cl.callbacks.flops.FlopCounter", "cl.modules.prompt_reference.ReferenceRun")


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


def recipe_config(cfg: DictConfig, skip: Sequence[str]) -> DictConfig:
    """A copy of the training config without the callbacks whose ``_target_`` is in ``skip``, a removed trainer
    (:data:`REMOVED_TRAINERS`, e.g. a checkpoint trained with the lean loop) replaced by its successor."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    callbacks = out.get("callbacks") or {}
    with open_dict(out):
        out.callbacks = {k: v for k, v in callbacks.items() if v is None or str(v.get("_target_", "")) not in set(skip)}
        trainer = out.get("trainer") or {}
        if str(trainer.get("_target_", "")) in REMOVED_TRAINERS:
            out.trainer._target_ = REMOVED_TRAINERS[str(trainer._target_)]
    return out


class Retrain(UnlearningMethod):
    """Retrain from the initial weights on the retain data with the original recipe."""

    needs_initial_weights = True

    def __init__(self, name: str = "retrain", skip_callbacks: Sequence[str] = MEASUREMENT_CALLBACKS) -> None:
        super().__init__(name)
        self.skip_callbacks = [str(s) for s in skip_callbacks]

    def unlearn(self, model: nn.Module, task: UnlearnTask) -> nn.Module:
        from cl.engine.loop import StreamRunner
        from unlearn.context import load_initial_weights

        method = load_initial_weights(task.ctx)
        stream = retain_stream(task.ctx.stream, task.ctx.experience, task.split.forget_train)
        cfg = recipe_config(task.ctx.cfg, self.skip_callbacks)
        runner = StreamRunner(cfg, method, stream, task.work_dir / "retrain_run")
        runner.run()
        self.info = {
            "method_seconds": runner.train_seconds,
            "retrain_run": str(task.work_dir / "retrain_run"),
            "skipped_callbacks": sorted(set(task.ctx.cfg.get("callbacks") or {}) - set(cfg.callbacks)),
            "trainer": str(cfg.trainer.get("_target_")),
        }
        return runner.method
