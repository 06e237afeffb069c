"""Bag- and instance-level matrices of a continual MIL run (CoMEL's evaluation protocol, Lee et al., ICCV 2025,
arXiv 2507.02395), for any method whose backbone is a MIL model (``forward_mil``, :class:`cl.backbones.gdat.GDATMIL`).

After every experience t the callback evaluates every experience j's test bags (one bag at a time): the bag logits are
the method's classifier on the backbone's bag feature, masked to the classes seen so far (task-agnostic, as the
engine's accuracy), and the instance probabilities are the backbone's normalised attention
(:meth:`GDATMIL.instance_probs`). Row t of a matrix per score of :mod:`cl.metrics.mil` is filled; ``metrics.json`` gets
``mil.bag_matrix`` (``bag_metric``, default accuracy) and ``mil.instance_matrix`` (``instance_metric``, default
instance AUC: localisation) with the usual summaries (avg, forgetting, BWT, ... from :func:`cl.metrics.compute_metrics`)
under ``mil.bag`` and ``mil.instance`` (avg, forgetting and BWT also as ``mil_<level>_<name>`` at the top level),
and every score's matrix under ``mil.matrices``. Scores that cannot be computed
on an experience (no patch labels, one class only) are ``null`` and the instance block is ``null`` when no experience
has patch labels. Enable with ``+callbacks=mil_metrics``; the rows are checkpointed (resume continues them).
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from cl.metrics.mil import BAG_METRICS, INSTANCE_METRICS, bag_scores, instance_scores


class MILMetrics(L.Callback):
    """Fills the bag and instance matrices after every experience (see the module docstring)."""

    def __init__(self, bag_metric: str = "acc", instance_metric: str = "auc") -> None:
        if bag_metric not in BAG_METRICS:
            raise ValueError(f"callbacks.mil_metrics.bag_metric={bag_metric!r}; allowed: {list(BAG_METRICS)}")
        if instance_metric not in INSTANCE_METRICS:
            raise ValueError(
                f"callbacks.mil_metrics.instance_metric={instance_metric!r}; allowed: {list(INSTANCE_METRICS)}"
            )
        self.bag_metric, self.instance_metric = bag_metric, instance_metric
        self.rows: list[dict[str, list[float | None]]] = []
        # time spent evaluating after fit: the engine excludes it from the training time (cl/engine/loop.py)
        self.measurement_seconds = 0.0
        self.measurement_cpu_seconds = 0.0

    @torch.no_grad()
    def evaluate(self, method: Any, stream: Any, device: torch.device) -> dict[str, list[float | None]]:
        backbone = method.backbone
        if not callable(getattr(backbone, "forward_mil", None)):
            raise ValueError("callbacks.mil_metrics needs a MIL backbone (backbone=gdat_mil)")
        was_training = method.training
        method.eval().to(device)
        seen = method.seen_classes if bool(method.seen_classes.any()) else torch.ones_like(method.seen_classes)
        row: dict[str, list[float | None]] = {f"bag_{k}": [] for k in BAG_METRICS}
        row.update({f"instance_{k}": [] for k in INSTANCE_METRICS})
        for exp in stream.experiences:
            probs, labels, inst_p, inst_y = [], [], [], []
            for x, y, inst, _ in DataLoader(exp.test, batch_size=1, shuffle=False):
                out = backbone.forward_mil(x.to(device))
                logits = method.apply_mask(method.head(out.bag), seen)
                probs.append(logits.softmax(dim=1).cpu())
                labels.append(y)
                inst_p.append(backbone.instance_probs(out.attention, out.valid)[0][out.valid[0]].cpu())
                inst_y.append(inst[0][out.valid[0].cpu()])
            bag = bag_scores(torch.cat(probs), torch.cat(labels), exp.classes)
            positive = [int(y) % 2 == 1 for y in torch.cat(labels)]
            ins = instance_scores(inst_p, inst_y, positive) if inst_p else None
            for k in BAG_METRICS:
                row[f"bag_{k}"].append(_clean(bag[k]))
            for k in INSTANCE_METRICS:
                row[f"instance_{k}"].append(None if ins is None else _clean(ins[k]))
        method.train(was_training)
        return row

    def on_experience_end(self, runner: Any, experience: Any) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        row = self.evaluate(runner.method, runner.stream, runner.device)
        self.rows = self.rows[: experience.index] + [row]
        self.measurement_seconds += time.perf_counter() - wall
        self.measurement_cpu_seconds += time.process_time() - cpu

    def report_metrics(self) -> dict[str, Any]:
        from cl.metrics import compute_metrics

        if not self.rows:
            return {}
        matrices = {k: [r[k] for r in self.rows] for k in self.rows[0]}
        out: dict[str, Any] = {"matrices": matrices, "bag_metric": self.bag_metric}
        out["instance_metric"] = self.instance_metric
        for level, key in (("bag", f"bag_{self.bag_metric}"), ("instance", f"instance_{self.instance_metric}")):
            m = matrices[key]
            complete = all(v is not None for r in m for v in r)
            out[f"{level}_matrix"] = m
            out[level] = _summary(compute_metrics(m)) if complete else None
        flat = {  # top-level scalars, which experiments/aggregate.py averages over seeds
            f"mil_{level}_{k}": v
            for level in ("bag", "instance")
            if out[level] is not None
            for k, v in out[level].items()
            if k in ("avg", "forgetting", "bwt")
        }
        return {"mil": out, **flat}

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))


def _clean(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("avg_acc", "avg_inc_acc", "forgetting", "bwt", "plasticity", "forgetting_fn")
    return {("avg" if k == "avg_acc" else "avg_inc" if k == "avg_inc_acc" else k): m[k] for k in keys}
