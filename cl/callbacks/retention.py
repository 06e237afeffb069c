"""Retention curves during training: recall and recognition of each experience's examples, every few updates.

Forgetting matrices sample the model once per experience; this callback samples it *within* the stream, as Orhan,
"Recognition, recall, and retention of few-shot memories in large language models" (arXiv 2303.17557) does: when an
experience ends, a seeded probe set of its training examples (``probe_size``) and a matched set of never-seen
examples (the same number per class, from the experience's test split, which no method trains on) are kept; from then
on both are scored after the optimizer updates chosen by ``schedule``:

* ``geometric`` (default): after 0, 1, 2, 4, 8, ... updates since exposure (``growth`` 2.0), since the interesting part
  is early (a steep drop over the first updates, then a slow decline);
* ``linear``: every ``every`` updates (and at exposure).

Scores (:mod:`cl.analysis.retention`): ``recall`` (accuracy on the seen probes, task-agnostic logits as the accuracy
matrix; for a method whose ``retention_scores`` is defined, e.g. a causal LM, its own recall such as exact-match
completion), ``recognition_2afc`` and ``recognition_auc`` (seen vs never seen by loss), ``unseen_recall`` (accuracy on
the never-seen set: what generalisation alone gives). Rows go to ``retention.csv`` (experience of exposure, updates
since exposure, global optimizer step, scores; rewritten atomically after every experience) and ``retention.png``
(after the last experience) in the run directory; ``experiments.aggregate`` averages the curves over seeds.

Cost accounting. Probe evaluation (and writing its files) is not training: its wall and CPU time is excluded from
the run's training ``seconds`` (the engine subtracts ``measurement_seconds``); scoring runs with FLOP counting
suspended, in eval mode, inside ``torch.random.fork_rng``, so the training run is bit-identical with and without this
callback (tested). Measured on the default experiment (``experiments/bench/retention_cost.py``): scoring is ~4% of the
run's wall time at the default settings.
The probe tensors are materialised once per experience under a seeded generator (one fixed draw of the training
transform where the data are augmented). Under DDP every rank scores the whole probe set (the model is replicated;
no collective is needed) and rank 0 writes. Resume: the rows, exposures and step count are in the callback's state in
each ``task_{t}.ckpt``; rows of an interrupted experience are dropped and recomputed, so the curve has no gap and no
duplicate.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from cl.analysis.retention import (
    COLUMNS,
    classifier_scores,
    geometric_points,
    loss_auc,
    plot_retention,
    two_afc,
)
from cl.utils.atomic import write_text

SCHEDULES = ("geometric", "linear")


class RetentionCallback(Callback):
    """Keeps probe sets of each finished experience and scores them after scheduled optimizer updates."""

    def __init__(
        self,
        probe_size: int = 32,
        schedule: str = "geometric",
        every: int = 10,
        growth: float = 2.0,
        seed: int = 0,
        batch_size: int = 256,
        plot: bool = True,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"callbacks.retention.schedule={schedule!r}; allowed: {list(SCHEDULES)}")
        if int(probe_size) < 1:
            raise ValueError(f"callbacks.retention.probe_size={probe_size}; allowed: an integer >= 1")
        if int(every) < 1:
            raise ValueError(f"callbacks.retention.every={every}; allowed: an integer >= 1")
        if int(batch_size) < 1:
            raise ValueError(f"callbacks.retention.batch_size={batch_size}; allowed: an integer >= 1")
        self.probe_size, self.schedule, self.every = int(probe_size), schedule, int(every)
        self.points = geometric_points(float(growth)) if schedule == "geometric" else frozenset()
        self.seed, self.batch_size, self.plot = int(seed), int(batch_size), bool(plot)
        self.rows: list[dict[str, Any]] = []
        self.exposures: dict[int, int] = {}  # experience -> total optimizer steps when it ended
        self.total_steps = 0  # optimizer steps over the whole stream so far
        self.measurement_seconds = 0.0  # wall time of probe scoring (excluded from training seconds by the engine)
        self.measurement_cpu_seconds = 0.0
        self._probes: dict[int, tuple[torch.Tensor, ...]] = {}  # experience -> (x_seen, y_seen, x_unseen, y_unseen)
        self._base = 0
        self._stream: Any = None

    # ------------------------------------------------------------------------------------------- schedule
    def due(self, updates: int) -> bool:
        """Whether a probe set exposed ``updates`` optimizer updates ago is scored now."""
        if self.schedule == "geometric":
            return updates in self.points
        return updates % self.every == 0

    # ------------------------------------------------------------------------------------------- probes
    def _materialise(self, experience: Any) -> tuple[torch.Tensor, ...]:
        """Seeded probe examples of ``experience``: seen ones from its training split, never-seen ones from its test
        split with the same number per class (fewer where the test split lacks them, then the 2AFC pairs shrink)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(experience.index))
        train, test = experience.train, experience.test
        seen = torch.randperm(len(train), generator=gen)[: self.probe_size].tolist()
        with torch.random.fork_rng(devices=[]):  # a random training transform draws from the global RNG
            torch.manual_seed(self.seed * 1_000_003 + int(experience.index))
            seen_items = [train[i] for i in seen]
            by_class: dict[int, list[int]] = {}
            for j in torch.randperm(len(test), generator=gen).tolist():
                by_class.setdefault(int(_label(test, j)), []).append(j)
            unseen = []
            for _, y in seen_items:
                pool = by_class.get(int(y), [])
                if pool:
                    unseen.append(pool.pop())
            unseen_items = [test[j] for j in unseen]
        xs = torch.stack([torch.as_tensor(x) for x, _ in seen_items])
        ys = torch.tensor([int(y) for _, y in seen_items])
        xu = torch.stack([torch.as_tensor(x) for x, _ in unseen_items]) if unseen_items else xs[:0]
        yu = torch.tensor([int(y) for _, y in unseen_items], dtype=torch.long)
        return xs, ys, xu, yu

    # ------------------------------------------------------------------------------------------- scoring
    def _score(self, method: Any, experience: int, updates: int) -> None:
        from torch.utils._python_dispatch import _disable_current_modes

        start, cpu_start = time.perf_counter(), time.process_time()
        xs, ys, xu, yu = self._probes[experience]
        device = next(method.parameters()).device
        was_training = method.training
        method.eval()
        try:
            with _disable_current_modes(), torch.random.fork_rng(devices=_cuda_devices(device)):
                x, y = torch.cat([xs, xu]), torch.cat([ys, yu])  # one forward pass over both sets
                scorer = getattr(method, "retention_scores", None)
                if scorer is not None:
                    ok, loss = scorer(x, y)
                else:
                    mask = method.seen_classes if bool(method.seen_classes.any()) else None
                    ok, loss = classifier_scores(method.eval_logits, x, y, mask, self.batch_size, device)
        finally:
            method.train(was_training)
        seen_ok, unseen_ok, seen_loss, unseen_loss = ok[: len(ys)], ok[len(ys) :], loss[: len(ys)], loss[len(ys) :]
        n = min(len(seen_loss), len(unseen_loss))
        self.rows.append(
            {
                "experience": experience,
                "updates_since_exposure": updates,
                "step": self.total_steps,
                "recall": float(seen_ok.double().mean()),
                "recognition_2afc": two_afc(seen_loss[:n], unseen_loss[:n]) if n else float("nan"),
                "recognition_auc": loss_auc(seen_loss, unseen_loss) if n else float("nan"),
                "unseen_recall": float(unseen_ok.double().mean()) if len(unseen_ok) else float("nan"),
            }
        )
        self.measurement_seconds += time.perf_counter() - start
        self.measurement_cpu_seconds += time.process_time() - cpu_start

    # ------------------------------------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._base = self.total_steps

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        total = self._base + int(trainer.global_step)
        if total == self.total_steps:  # no optimizer update in this batch (gradient accumulation)
            return
        self.total_steps = total
        for experience, exposed in self.exposures.items():
            if self.due(total - exposed):
                self._score(pl_module, experience, total - exposed)

    # ------------------------------------------------------------------------------------------- engine hooks
    def on_experience_end(self, runner: Any, experience: Any) -> None:
        from cl.engine.distributed import is_global_zero

        e = int(experience.index)
        self._stream = runner.stream
        self._probes[e] = self._materialise(experience)
        self.exposures[e] = self.total_steps
        self._score(runner.method, e, 0)
        if is_global_zero():
            start, cpu_start = time.perf_counter(), time.process_time()
            self.write(runner.run_dir, plot=self.plot and e == len(runner.stream.experiences) - 1)
            self.measurement_seconds += time.perf_counter() - start
            self.measurement_cpu_seconds += time.process_time() - cpu_start

    def write(self, run_dir: Any, plot: bool = True) -> None:
        """``retention.csv`` (every experience) and ``retention.png`` (``plot``: after the last one), atomically."""
        from pathlib import Path

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(Path(run_dir) / "retention.csv", buf.getvalue())
        if plot and self.rows:
            plot_retention(self.rows, Path(run_dir) / "retention.png")

    def report_metrics(self) -> dict[str, Any]:
        """Summary for metrics.json: mean recall/recognition of the exposed probe sets at their latest evaluation."""
        latest: dict[int, dict[str, Any]] = {}
        for row in self.rows:
            latest[row["experience"]] = row
        if not latest:
            return {}
        n = len(latest)
        return {
            "retention_recall": sum(r["recall"] for r in latest.values()) / n,
            "retention_recognition_2afc": sum(r["recognition_2afc"] for r in latest.values()) / n,
            "retention_seconds": self.measurement_seconds,
        }

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": [dict(r) for r in self.rows],
            "exposures": dict(self.exposures),
            "total_steps": self.total_steps,
            "measurement_seconds": self.measurement_seconds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict["rows"]]
        self.exposures = {int(k): int(v) for k, v in state_dict["exposures"].items()}
        self.total_steps = int(state_dict["total_steps"])
        self.measurement_seconds = float(state_dict.get("measurement_seconds", 0.0))
        self._probes.clear()  # re-materialised by setup_stream (the engine calls it on resume)

    def setup_stream(self, stream: Any) -> None:
        """Re-materialise the probe sets of the exposed experiences (after a resume) from the rebuilt stream."""
        for e in self.exposures:
            if e not in self._probes:
                self._probes[e] = self._materialise(stream.experiences[e])


def _label(dataset: Any, index: int) -> int:
    """The label of ``dataset[index]`` without loading the sample where the dataset (or a Subset's base) has targets."""
    from torch.utils.data import Subset

    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return int(targets[index])
    return int(dataset[index][1])


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []
