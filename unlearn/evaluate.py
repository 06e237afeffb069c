"""Evaluation of an unlearned model (``unlearn_report.json`` keys; every accuracy is a fraction in [0, 1]).

* ``retain_train_acc``, ``retain_test_acc``, ``forget_train_acc``, ``forget_test_acc`` (``None`` for sample-level
  forgets, which have no forget-test split), ``test_acc`` (every test sample of the seen experiences);
  task-agnostic (logits masked to the seen classes), task-aware in task-incremental streams.
* ``per_task_acc``: the accuracy of every experience of the stream (``cl.engine.evaluate.evaluate_stream``, the main
  matrix's kind), i.e. a new row of the accuracy matrix after unlearning, beside the row before it.
* ``mia_entropy`` and ``mia_loss``: :mod:`unlearn.mia`.
* ``probe_forget_test_acc`` / ``probe_retain_test_acc``: a linear probe (multinomial logistic regression on
  standardised penultimate features ``backbone(x)``) trained on all seen training data, forget samples included, and
  tested on the forget / retain test splits: whether the forgotten classes stay linearly decodable from the features
  even when the head no longer predicts them; ``probe_forget_test_acc_per_class`` gives it per forgotten class.
* ``relearn`` / ``relearn_forget_acc`` (after unlearning only): the relearning attack of :mod:`unlearn.relearn`.
The same keys for the model before unlearning are prefixed ``original_``; with a reference run on the same split
(``reference=PATH``, e.g. ``retrain``), ``gap_to_reference_<key>`` = this model's value minus the reference's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

ACC_KEYS = ("retain_train_acc", "retain_test_acc", "forget_train_acc", "forget_test_acc", "test_acc")
MIA_KEYS = ("mia_entropy", "mia_loss")
PROBE_KEYS = ("probe_forget_test_acc", "probe_retain_test_acc")
RELEARN_KEYS = ("relearn_forget_acc",)  # unlearn/relearn.py: after unlearning only
SCALAR_KEYS = ACC_KEYS + MIA_KEYS + PROBE_KEYS + RELEARN_KEYS


def class_masks(model: nn.Module, stream: Any) -> torch.Tensor:
    """``(num_experiences, num_classes)`` logit masks: the seen classes, or each experience's own in task streams."""
    seen = model.seen_classes.detach().cpu().clone()
    masks = seen.expand(len(stream), -1).clone()
    if stream.scenario == "task":
        masks.zero_()
        for e, exp in enumerate(stream.experiences):
            masks[e, exp.classes] = True
    return masks


@torch.no_grad()
def forward_pool(
    model: nn.Module, dataset: Dataset, masks: torch.Tensor, device: torch.device, batch_size: int, features: bool
) -> dict[str, np.ndarray]:
    """Per-sample labels, predictions, losses, softmax entropies and (optionally) penultimate features."""
    out: dict[str, list] = {"y": [], "pred": [], "loss": [], "entropy": [], "feat": []}
    for x, y, e in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x, y = x.to(device), torch.as_tensor(y).to(device)
        m = masks[torch.as_tensor(e)].to(device)
        logits = model.eval_logits(x).float().masked_fill(~m, torch.finfo(torch.float32).min)
        logp = F.log_softmax(logits, dim=1)
        out["y"].append(y.cpu())
        out["pred"].append(logits.argmax(1).cpu())
        out["loss"].append(F.nll_loss(logp, y, reduction="none").cpu())
        out["entropy"].append(-(logp.exp() * logp.clamp_min(-1e4)).sum(1).cpu())
        if features:
            out["feat"].append(model.backbone(x).float().cpu())
    return {k: torch.cat(v).numpy() if v else np.zeros(0) for k, v in out.items()}


def _acc(p: dict[str, np.ndarray]) -> float | None:
    return float((p["pred"] == p["y"]).mean()) if len(p["y"]) else None


def linear_probe(train: list[dict[str, np.ndarray]], tests: list[dict[str, np.ndarray]], seed: int) -> list[np.ndarray]:
    """Fit a logistic regression on the train pools' features; its predictions on each test pool."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([p["feat"] for p in train])
    y = np.concatenate([p["y"] for p in train])
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(max_iter=500, random_state=seed).fit(scaler.transform(x), y)
    return [clf.predict(scaler.transform(p["feat"])) if len(p["y"]) else np.zeros(0, dtype=int) for p in tests]


def per_class_accuracy(y: np.ndarray, pred: np.ndarray, classes: list[int]) -> dict[str, float | None]:
    """Accuracy of ``pred`` on the samples of each class (JSON keys: the class index as a string)."""
    return {str(c): float((pred[y == c] == c).mean()) if (y == c).any() else None for c in classes}


def evaluate_model(model: nn.Module, task: Any, eval_batch_size: int, probe: bool = True) -> dict[str, Any]:
    """Every key of the module docstring (without prefixes) for ``model`` on ``task``'s splits."""
    from cl.engine.evaluate import evaluate_stream
    from unlearn.data import PoolDataset
    from unlearn.mia import entropy_attack, loss_attack

    stream, split, device = task.ctx.stream, task.split, task.device
    was = model.training
    model.eval().to(device)
    masks = class_masks(model, stream)
    pools = {
        "retain_train": task.retain,
        "forget_train": task.forget,
        "retain_test": PoolDataset(stream, split.retain_test, "test"),
        "forget_test": PoolDataset(stream, split.forget_test, "test"),
    }
    out = {k: forward_pool(model, ds, masks, device, eval_batch_size, probe) for k, ds in pools.items()}
    # forget_test is empty for sample-level forgets (its arrays are then 1-D and empty), and "feat" is empty in both
    # without the probe: concatenate the non-empty ones
    test = {
        k: np.concatenate([a for a in (out["retain_test"][k], out["forget_test"][k]) if len(a)] or [np.zeros(0)])
        for k in out["retain_test"]
    }
    r: dict[str, Any] = {f"{k}_acc": _acc(v) for k, v in out.items()}
    r["test_acc"] = _acc(test)
    r["mia_entropy"] = entropy_attack(out["retain_train"]["entropy"], test["entropy"], out["forget_train"]["entropy"])
    r["mia_loss"] = loss_attack(out["retain_train"]["loss"], test["loss"], out["forget_train"]["loss"])
    if probe:
        tests = [out["forget_test"], out["retain_test"]]
        preds = linear_probe([out["retain_train"], out["forget_train"]], tests, task.seed)
        r["probe_forget_test_acc"], r["probe_retain_test_acc"] = (
            float((p == t["y"]).mean()) if len(p) else None for p, t in zip(preds, tests, strict=True)
        )
        if split.forget_classes:  # is each forgotten class still linearly decodable from the features?
            r["probe_forget_test_acc_per_class"] = per_class_accuracy(
                out["forget_test"]["y"], preds[0], list(split.forget_classes)
            )
    tag, taw = evaluate_stream(model, stream, eval_batch_size, device)
    r["per_task_acc"] = taw if stream.scenario == "task" else tag
    model.train(was)
    return r


def combine(after: dict[str, Any], before: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """``after`` plus ``original_*`` keys and, with a reference report, ``gap_to_reference_*`` keys."""
    out = dict(after)
    out.update({f"original_{k}": v for k, v in before.items()})
    if reference is not None:
        for k in (*SCALAR_KEYS, "per_task_acc"):
            a, b = after.get(k), reference.get(k)
            if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                out[f"gap_to_reference_{k}"] = [x - y for x, y in zip(a, b, strict=True)]
            elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
                out[f"gap_to_reference_{k}"] = float(a) - float(b)
    return out
