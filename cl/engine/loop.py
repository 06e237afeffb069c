"""The task loop: for each experience fit, evaluate every experience (seen and unseen), checkpoint, report.

Row t of the accuracy matrix R holds the accuracy on every experience j after training through experience t; a row R0
measured before any training gives forward transfer. Each experience starts from ``seed_everything(seed + t)``, so an
interrupted run resumed after experience t reproduces the uninterrupted run's matrix exactly (on CPU). A SIGTERM
during training (Lightning turns it into ``SIGTERMException``) abandons the current experience and raises
:class:`Preempted`; the checkpoints of completed experiences are already on disk and a resumed run redoes it. A SIGTERM
outside training (evaluation, checkpoint writing) lets the experience finish and stops before the next one.

Main matrix by scenario: class-incremental → task-agnostic accuracy (the task-aware matrix is kept beside it as
``acc_matrix_task_aware``); task-incremental → task-aware; domain-incremental → the two coincide. ``fwt`` in
class-incremental runs is computed on the task-aware matrices, because task-agnostic accuracy on classes never seen is
0 by construction (masked), which would make forward transfer meaningless.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from cl.data.stream import Stream
from cl.engine.checkpoint import save_checkpoint
from cl.engine.distributed import (
    ShardedEpochSampler,
    SigtermLatch,
    any_rank,
    is_global_zero,
    per_rank_batch_size,
    world_size_of,
)
from cl.engine.evaluate import evaluate_stream
from cl.engine.trainer import build_callbacks, make_trainer
from cl.metrics import compute_metrics, fwt, write_reports


class Preempted(RuntimeError):
    """Training of an experience was interrupted by SIGTERM; completed experiences are checkpointed."""

    def __init__(self, experience: int, started: bool = True) -> None:
        when = "while training" if started else "before"
        super().__init__(f"SIGTERM received {when} experience {experience}; resume to continue")
        self.experience = experience


def compute_device(trainer_cfg: DictConfig) -> torch.device:
    """The device on which the engine evaluates (the trainer's accelerator)."""
    acc = str(trainer_cfg.get("accelerator", "cpu"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cuda")
    return torch.device("cpu")


class StreamRunner:
    """Runs a method over a stream and writes the run directory (see the module docstring).

    Extension points: ``cfg.callbacks`` (a dict of ``_target_`` configs) are Lightning callbacks built once per run,
    given to every experience's Trainer (so they see every step across experiences), checkpointed through their
    ``state_dict``; a callback may also define ``on_experience_end(runner, experience)`` (called after the method's
    own hook, before evaluation) and ``report_metrics() -> dict`` (merged into ``metrics.json``), as may the method,
    ``setup_stream(stream)`` (called once before training and on resume), and ``measurement_seconds`` /
    ``measurement_cpu_seconds`` counters of time spent measuring inside ``fit``, which the training time excludes.
    """

    def __init__(self, cfg: DictConfig, method: Any, stream: Stream, run_dir: Path) -> None:
        self.cfg, self.method, self.stream, self.run_dir = cfg, method, stream, run_dir
        T = len(stream)
        self.R = np.zeros((T, T))
        self.R_taw = np.zeros((T, T))
        self.R0 = np.zeros(T)
        self.R0_taw = np.zeros(T)
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0  # CPU time of this process over the same spans (not checkpointed; benchmarks)
        self.extra_metrics: dict[str, Any] = {}
        self.start = 0
        self.device = compute_device(cfg.trainer)
        self.callbacks = build_callbacks(cfg)

    # ------------------------------------------------------------------------------------------------ data
    def train_loader(self, dataset: Dataset, experience: int, world_size: int = 1) -> DataLoader:
        """Shuffled batches of ``data.batch_size`` (the global batch) split over ``world_size`` processes, in the same
        order for any number of processes (see cl/engine/distributed.py); ``data.drop_last=true`` drops each epoch's
        last, smaller batch (the prompt methods' reference code does)."""
        data = self.cfg.data
        drop_last = data.get("drop_last", False)
        if not isinstance(drop_last, bool):
            raise ValueError(f"data.drop_last={drop_last!r}; allowed: true, false")
        batch = int(data.batch_size)
        seed = int(self.cfg.seed) * 1_000_000 + experience * 1_000
        sampler = ShardedEpochSampler(len(dataset), seed, world_size, batch if drop_last else 0)
        return DataLoader(
            dataset,
            batch_size=per_rank_batch_size(batch, world_size),
            sampler=sampler,
            drop_last=drop_last,  # a no-op after the sampler's cut; read by k-FPF's step plan
            num_workers=int(data.num_workers),
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            collate_fn=getattr(dataset, "collate_fn", None),  # variable-length data (instruction tasks) pad per batch
        )

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        data = self.cfg.data
        return DataLoader(
            dataset, batch_size=int(data.eval_batch_size), shuffle=False, num_workers=int(data.num_workers)
        )

    def evaluate(self) -> tuple[list[float], list[float]]:
        data = self.cfg.data
        if hasattr(
            self.method, "evaluate_stream"
        ):  # a method that scores generated answers (cl/methods/instruction.py)
            return self.method.evaluate_stream(
                self.stream, int(data.eval_batch_size), self.device, int(data.num_workers)
            )
        return evaluate_stream(self.method, self.stream, int(data.eval_batch_size), self.device, int(data.num_workers))

    # ------------------------------------------------------------------------------------------------ state
    def restore(self, payload: dict[str, Any]) -> None:
        """Continue after the experience stored in a checkpoint payload (``initial.ckpt``, experience -1: from the
        start, with the saved initial weights)."""
        t = int(payload["experience"])
        if t >= 0:
            self.R[: t + 1] = np.asarray(payload["acc_matrix"])
            self.R_taw[: t + 1] = np.asarray(payload["acc_matrix_task_aware"])
        self.R0[:] = payload["R0"]
        self.R0_taw[:] = payload["R0_task_aware"]
        self.train_seconds = float(payload["train_seconds"])
        for name, cb in self.callbacks.items():
            if name in payload.get("callbacks", {}):
                cb.load_state_dict(payload["callbacks"][name])
        self.start = t + 1

    def payload(self, t: int) -> dict[str, Any]:
        """What resume (:meth:`restore`, ``cl.experiment``) and unlearning (``unlearn/context.py``) read. No optimizer
        state (every experience's ``fit`` builds a fresh optimizer) and no RNG state (experience t starts from
        ``seed_everything(seed + t)``)."""
        return {
            "experience": t,
            "num_experiences": len(self.stream),
            "state_dict": self.method.state_dict(),
            "acc_matrix": self.R[: t + 1].tolist(),  # t = -1: the initial weights, no row yet
            "acc_matrix_task_aware": self.R_taw[: t + 1].tolist(),
            "R0": self.R0.tolist(),
            "R0_task_aware": self.R0_taw.tolist(),
            "train_seconds": self.train_seconds,
            "scenario": self.stream.scenario,
            "class_order": self.stream.class_order,
            "experience_classes": [e.classes for e in self.stream.experiences],
            "method_class": f"{type(self.method).__module__}.{type(self.method).__qualname__}",
            "callbacks": {name: cb.state_dict() for name, cb in self.callbacks.items()},
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def measurement_seconds(self) -> tuple[float, float]:
        """Wall and CPU seconds that callbacks spent measuring inside the timed span (``measurement_seconds`` and
        ``measurement_cpu_seconds`` attributes, e.g. retention probes): excluded from the training time."""
        cbs = self.callbacks.values()
        return (
            sum(float(getattr(cb, "measurement_seconds", 0.0)) for cb in cbs),
            sum(float(getattr(cb, "measurement_cpu_seconds", 0.0)) for cb in cbs),
        )

    # ------------------------------------------------------------------------------------------------ metrics
    def metrics(self, t: int) -> dict[str, Any]:
        main, main0 = (self.R_taw, self.R0_taw) if self.stream.scenario == "task" else (self.R, self.R0)
        m = compute_metrics(
            main[: t + 1], R0=main0, R_taw=self.R_taw[: t + 1] if self.stream.scenario == "class" else None
        )
        if self.stream.scenario == "class":
            m["fwt"] = fwt(self.R_taw[: t + 1, : t + 1], self.R0_taw[: t + 1])
        m.update(
            scenario=self.stream.scenario,
            complete=t == len(self.stream) - 1,
            seconds=self.train_seconds,
            method=self.method.method_name,
            seed=int(self.cfg.seed),
            **self.extra_metrics,
        )
        m.update(self.method.report_metrics())
        for cb in self.callbacks.values():
            if hasattr(cb, "report_metrics"):
                m.update(cb.report_metrics())
        return m

    # ------------------------------------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        with SigtermLatch() as sigterm:  # a SIGTERM outside fit stops the run at the next experience boundary
            return self._run(sigterm)

    def _run(self, sigterm: SigtermLatch) -> dict[str, Any]:
        self.method.setup_stream(self.stream)
        for cb in self.callbacks.values():
            if hasattr(cb, "setup_stream"):
                cb.setup_stream(self.stream)
        if self.start == 0:
            seed_everything(int(self.cfg.seed), verbose=False)
            if is_global_zero():  # the weights before any training (unlearning's `retrain` starts from them)
                save_checkpoint(self.run_dir / "checkpoints" / "initial.ckpt", self.payload(-1))
            self.R0[:], self.R0_taw[:] = self.evaluate()
        metrics: dict[str, Any] = {}
        for t in range(self.start, len(self.stream)):
            if any_rank(sigterm.received, self.device):
                raise Preempted(t, started=False)
            metrics = self.run_experience(t)
        if self.start >= len(self.stream):
            metrics = self.metrics(len(self.stream) - 1)
        return metrics

    def run_experience(self, t: int) -> dict[str, Any]:
        seed_everything(int(self.cfg.seed) + t, verbose=False)
        exp = self.stream.experiences[t]
        self.method.on_experience_start(exp)
        start, cpu_start = time.perf_counter(), time.process_time()  # train_seconds include building the Trainer
        measured = self.measurement_seconds()
        trainer = make_trainer(
            self.cfg.trainer, self.cfg.get("logger"), self.run_dir, t, len(self.stream), list(self.callbacks.values())
        )
        loader = self.train_loader(self.method.train_dataset(exp, self.stream), t, world_size_of(trainer))
        try:
            if self.method.trainable_parameters():  # a training-free method (SimpleCIL) has nothing to fit
                trainer.fit(self.method, train_dataloaders=loader)
        except SIGTERMException as err:
            raise Preempted(t) from err
        if trainer.received_sigterm:
            raise Preempted(t)
        self.last_trainer = trainer
        self.method.on_experience_end(exp, self.eval_loader)
        for cb in self.callbacks.values():
            if hasattr(cb, "on_experience_end"):
                cb.on_experience_end(self, exp)
        wall, cpu = (now - m for now, m in zip(self.measurement_seconds(), measured, strict=True))
        self.train_seconds += time.perf_counter() - start - wall
        self.train_cpu_seconds += time.process_time() - cpu_start - cpu
        self.R[t], self.R_taw[t] = self.evaluate()
        metrics = self.metrics(t)
        if is_global_zero():
            save_checkpoint(self.run_dir / "checkpoints" / f"task_{t}.ckpt", self.payload(t))
            main = self.R_taw if self.stream.scenario == "task" else self.R
            write_reports(self.run_dir, metrics, main[: t + 1], plot=t == len(self.stream) - 1)
        return metrics
