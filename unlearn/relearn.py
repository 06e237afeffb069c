"""Relearning attack: how fast does the forgotten knowledge come back after a few fine-tuning steps?

After unlearning, a copy of the model is fine-tuned on a small seeded part (``fraction``, default 10 %) of the forget
set and its accuracy is measured after each of ``steps`` (cumulative optimizer steps) on the forget-test split and on
the forget-train samples the attack did not use (the held-out 90 %). A model that only hid the forgotten classes (a
suppressed head row, features intact) recovers within a few steps; a retrained one has to learn them again. This is
the evaluation of relearning studies ("Unforgettable Generalization in Language Models", 2024; Lynch et al., "Eight
Methods to Evaluate Robust Unlearning in LLMs", arXiv 2402.16835) and of SSD's follow-ups; compare the curve with the
``retrain`` reference on the same split (``reference=RETRAIN_RUN``: ``gap_to_reference_relearn_forget_acc``).

Choices (``conf/unlearn.yaml`` ``eval.relearn``): SGD with momentum 0.9, cross-entropy of the masked evaluation
logits (:meth:`UnlearnTask.logits`), the model's trainable parameters (``requires_grad``), batches drawn with
replacement-free seeded shuffling (:func:`fine_tune_steps`: Lightning's ``Trainer``, as every training loop of the
project, on the run's accelerator and precision, one process: under DDP each rank runs the same attack), the model in
eval mode (batch-norm statistics and dropout fixed: the attack changes
weights only, so a few one-class batches do not corrupt the running statistics). The unlearned model itself is never
changed (the attack works on a deep copy). Report keys: ``relearn`` (samples, steps, accuracies per step, step 0 =
the unlearned model) and the scalar ``relearn_forget_acc`` (forget-test accuracy after the last step; forget-held-out
accuracy for sample-level forgets, which have no forget-test split).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn


def relearn_subset(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Positions of the attack's samples (``ceil(fraction * n)``, at least 1, seeded) and of the held-out rest."""
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"eval.relearn.fraction={fraction}; allowed: a number in (0, 1]")
    k = max(1, math.ceil(float(fraction) * n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[:k]), sorted(perm[k:])


def check_relearn(cfg: Any) -> None:
    """Early check of ``eval.relearn`` (null or a mapping with fraction, steps, lr, batch_size)."""
    if cfg is None:
        return
    steps = list(cfg.get("steps") or [])
    if not steps or any(int(s) < 1 for s in steps) or steps != sorted(steps):
        raise ValueError(f"eval.relearn.steps={steps}; allowed: increasing positive step counts, e.g. [1, 5, 10]")
    for key in ("lr", "batch_size"):
        if not float(cfg.get(key, 0)) > 0:
            raise ValueError(f"eval.relearn.{key}={cfg.get(key)}; allowed: a positive number")
    relearn_subset(10, float(cfg.get("fraction", 0.1)), 0)


def _accuracy(model: nn.Module, task: Any, dataset: Any, batch_size: int) -> float | None:
    if len(dataset) == 0:
        return None
    correct = 0
    with torch.no_grad():
        for x, y, _ in task.loader(dataset, batch_size=batch_size):
            x, y = x.to(task.device), torch.as_tensor(y).to(task.device)
            correct += int((task.logits(model, x).argmax(1) == y).sum())
    return correct / len(dataset)


class _AtSteps(Callback):
    """Calls ``on_step(step)`` after each optimizer step whose cumulative count is in ``steps``."""

    def __init__(self, steps: list[int], on_step: Callable[[int], None]) -> None:
        self.steps, self.on_step = set(steps), on_step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step in self.steps:
            self.on_step(int(trainer.global_step))


def fine_tune_steps(
    net: nn.Module,
    data: Any,
    loss: Callable[[nn.Module, tuple[Any, ...]], torch.Tensor],
    *,
    lr: float,
    batch_size: int,
    seed: int,
    steps: list[int],
    on_step: Callable[[int], None],
    trainer_cfg: Any,
    device: torch.device,
) -> None:
    """``steps[-1]`` SGD steps (momentum 0.9) of ``loss`` on ``net`` with Lightning's ``Trainer`` on ``device`` alone
    (unlearn/training.py; under DDP every rank runs the same attack), ``on_step(k)`` after step k of ``steps``. Batches:
    seeded replacement-free passes over ``data``, one generator for all passes (each pass reshuffles). The mode of
    ``net`` is left as it is (eval: the attack changes weights only)."""
    from torch.utils.data import DataLoader

    from unlearn.training import LossModule, fit, unlearn_trainer

    gen = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(data, batch_size=int(batch_size), shuffle=True, generator=gen)
    module = LossModule(net, loss, lambda params: torch.optim.SGD(params, lr=float(lr), momentum=0.9))
    callbacks = [_AtSteps(steps, on_step)]
    trainer = unlearn_trainer(trainer_cfg, device=device, max_steps=int(steps[-1]), max_epochs=-1, callbacks=callbacks)
    with warnings.catch_warnings():  # eval mode is the attack's choice (module docstring), not an oversight
        warnings.filterwarnings("ignore", r"Found \d+ module\(s\) in eval mode", UserWarning)
        fit(module, trainer, loader, device)


def relearn_attack(model: nn.Module, task: Any, cfg: Any, eval_batch_size: int) -> dict[str, Any]:
    """Run the attack of the module docstring on a copy of ``model``; returns the report keys."""
    from unlearn.data import PoolDataset

    forget = task.forget
    attack_pos, rest_pos = relearn_subset(len(forget), float(cfg.get("fraction", 0.1)), task.seed)
    attack = forget.subset([forget.keys[i] for i in attack_pos])
    heldout = forget.subset([forget.keys[i] for i in rest_pos])
    forget_test = PoolDataset(task.ctx.stream, task.split.forget_test, "test")
    steps = [int(s) for s in cfg.steps]

    net = copy.deepcopy(model).to(task.device).eval()
    if not any(p.requires_grad for p in net.parameters()):  # nothing a fine-tuning attack could change (prototypes)
        return {"relearn": {"skipped": "the model has no trainable parameters"}, "relearn_forget_acc": None}
    out: dict[str, list] = {"steps": [0], "forget_test_acc": [], "forget_heldout_acc": []}

    def measure(step: int) -> None:
        if step:
            out["steps"].append(step)
        out["forget_test_acc"].append(_accuracy(net, task, forget_test, eval_batch_size))
        out["forget_heldout_acc"].append(_accuracy(net, task, heldout, eval_batch_size))

    def loss(m: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
        return F.cross_entropy(task.logits(m, batch[0]), batch[1])

    measure(0)
    fine_tune_steps(
        net,
        attack,
        loss,
        lr=float(cfg.lr),
        batch_size=int(cfg.batch_size),
        seed=int(task.seed),
        steps=steps,
        on_step=measure,
        trainer_cfg=task.ctx.cfg.trainer,
        device=task.device,
    )
    last = out["forget_test_acc"][-1] if len(forget_test) else out["forget_heldout_acc"][-1]
    return {"relearn": {"samples": len(attack), "heldout_samples": len(heldout), **out}, "relearn_forget_acc": last}
