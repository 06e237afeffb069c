"""Multi-process training (Lightning DDP) and preemption support of the engine.

How a DDP run works (``trainer=ddp`` on GPUs, ``trainer=ddp_cpu`` for 2 gloo processes on a CPU):

* **Processes.** Started from a shell, Lightning's ``_SubprocessScriptLauncher`` re-executes ``python -m cl.run ...``
  for ranks 1..N-1 when the first experience's ``trainer.fit`` starts, adding ``hydra.run.dir=<rank 0's run dir>
  hydra.output_subdir=null``, so every rank works in the same run directory. Each rank builds the same stream and
  method (``seed_everything(seed + t)``) and, on a resume, reads the same ``task_{t}.ckpt`` (rank 0 waits in the
  process-group rendezvous meanwhile, so it writes nothing). Under SLURM, start one task per device instead
  (``hydra.launcher.tasks_per_node = trainer.devices``): Lightning's ``SLURMEnvironment`` then uses the SLURM tasks and
  re-executes nothing. A Hydra multirun (``-m``) cannot be re-executed per rank (the command is the whole sweep), so
  DDP under ``-m`` needs SLURM tasks; :func:`check_distributed_config` refuses the other cases before training.
* **One process group for the whole stream.** The engine makes a new ``Trainer`` per experience. The first one spawns
  the ranks and initialises ``torch.distributed``; the later ones find ``LOCAL_RANK`` set (no second spawn) and the
  group initialised (kept: Lightning destroys it only at exit).
* **Global batch.** ``data.batch_size`` is the global batch: each of the W ranks loads ``batch_size / W`` samples per
  step (:func:`per_rank_batch_size`), and DDP averages the gradients, which for a per-sample-mean loss equals the
  gradient of the whole global batch.
* **Training data order.** :class:`ShardedEpochSampler` draws one permutation per (experience, epoch) from the run's
  seed, the same for any W, and gives rank r the positions r, r+W, ...; per-rank batch b therefore holds exactly the
  global positions [b*B, (b+1)*B) of a 1-process run (B = global batch), split by rank: row i of rank r is row
  i*W + r of the 1-process batch (so gathering the ranks' batches *interleaved* rebuilds it in order, which
  order-dependent state such as a reservoir buffer needs to match). A W-process run sees the same samples in the same
  steps as a 1-process run. Bounded difference: when the experience's sample count N is not
  a multiple of W, the permutation is padded with its first ``(-N) % W`` samples (at most W-1 duplicates per epoch,
  all in the last step), as ``DistributedSampler`` does; the float sums of the all-reduce also differ in the last bits.
  Lightning's own distributed sampler is switched off (``use_distributed_sampler=False``) because the engine shards.
* **Evaluation** (``cl/engine/evaluate.py``) shards each test set ``rank::W`` and all-reduces the counts: exact.
* **Files.** Only global rank 0 writes checkpoints, metrics, reports and ``run_info.json`` (:func:`is_global_zero`,
  which also holds in a rank-1 process before the process group exists); Lightning's loggers write on rank 0 only.

Contract for methods (state kept across experiences must be identical on every rank, as it is saved from rank 0):

* Parameters (prompts, adapters, heads) are kept in sync by DDP's gradient all-reduce; masks and other buffers that
  are set from the stream in hooks (``on_experience_start``) are identical because every rank sees the same stream.
* Statistics computed after training (``on_experience_end``): the engine's ``loader_factory`` yields the *whole*
  dataset on every rank, so a method computing from it (EWC's Fisher, a replay buffer's selection with a seeded
  generator) gets the same state on every rank without communication. A method may instead shard that work with
  :func:`shard` and all-reduce sums *and* counts itself (``kernels.fisher_diagonal`` all-reduces both, so on unsharded
  input its mean is still exact: every rank contributes the same sum and count).
* State updated from *training batches* (a replay buffer filled in ``on_train_batch_end``, running statistics) sees
  only this rank's share of the global batch: gather the batch across ranks (``self.all_gather``) before the update,
  so every rank applies the update of the 1-process run; otherwise rank 0's state, which is the one saved, holds
  only its own share. Gather *interleaved* (row i of rank r is row ``i * W + r``, see "Training data order") to
  rebuild the 1-process batch order, as :class:`cl.modules.buffer.ReservoirBuffer` does. A random draw inside
  ``training_step`` (a replay batch) should be the 1-process draw, the same on every rank (the global RNG is seeded
  identically on every rank), of which each rank keeps its share ``[rank::W]``: together the ranks then replay the
  1-process batch (``ReservoirBuffer.sample(n, shard=True)``; ER and DER++ under 2 gloo processes match 1 process,
  tests/engine/test_ddp_gloo.py).
* Anything random in a hook must use a generator seeded from the config/experience, never the global RNG advanced
  differently on different ranks. Batch-coupled layers (BatchNorm) see per-rank batches: set
  ``trainer.sync_batchnorm=true`` for the 1-process statistics.

Preemption: a SIGTERM during ``trainer.fit`` becomes :class:`cl.engine.loop.Preempted` (under DDP every rank at the
same step: :class:`cl.engine.ddp_strategy.DDPStrategy`); one received outside it (evaluation, checkpoint writing) is
held by :class:`SigtermLatch` until the experience's checkpoint is written, and the run stops before the next
experience (all ranks agree, :func:`any_rank`). ``cl.run`` exits with 143 after the completed experiences' checkpoints
are on disk, and, with ``requeue_on_preempt=true`` inside a SLURM job, first asks SLURM to requeue the job
(:func:`requeue_slurm_job`). The requeued job re-runs the same command into the same run
directory, which resumes after the last completed experience.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler, Subset

_RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
_SPAWNING = ("spawn", "fork", "notebook")


def dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(global rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist_ready():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_global_zero() -> bool:
    """True in the process that writes files: rank 0 of the group, or (before the group exists) a process whose
    launcher did not mark it as another rank (``RANK``, ``LOCAL_RANK``, ``NODE_RANK``, ``SLURM_PROCID``)."""
    if dist_ready():
        return torch.distributed.get_rank() == 0
    return all(os.environ.get(k, "0") in ("", "0") for k in _RANK_ENV)


def shard(dataset: Dataset) -> Dataset:
    """This rank's part ``rank::world`` of ``dataset`` (no padding, no duplicates); the dataset itself if alone."""
    rank, world = rank_and_world()
    return dataset if world == 1 else Subset(dataset, list(range(rank, len(dataset), world)))


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    """``data.batch_size`` (the global batch) split over ``world_size`` ranks; refuses a batch that does not divide."""
    if global_batch < 1 or global_batch % world_size:
        raise ValueError(
            f"data.batch_size={global_batch} is the global batch and must be a positive multiple of the number of "
            f"processes ({world_size} = trainer.devices x trainer.num_nodes)"
        )
    return global_batch // world_size


class ShardedEpochSampler(Sampler[int]):
    """Rank r's share of a seeded per-epoch permutation (see the module docstring, "Training data order").

    The permutation of epoch e is ``randperm(n, generator=manual_seed(seed + e))``, padded to a multiple of
    ``world_size`` with its own first entries; the rank is read when iterating (the process group exists by then).
    Lightning calls :meth:`set_epoch` at every epoch start. ``drop_last_batch=B`` (``data.drop_last=true``, B the
    global batch) cuts the permutation to ``floor(n / B) * B`` instead: the last, smaller global batch of the epoch
    is dropped, the same samples for any number of ranks (B is a multiple of ``world_size``).
    """

    def __init__(self, num_samples: int, seed: int, world_size: int, drop_last_batch: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"ShardedEpochSampler: num_samples={num_samples}; must be positive")
        if drop_last_batch and num_samples < drop_last_batch:
            raise ValueError(
                f"data.drop_last=true with data.batch_size={drop_last_batch} drops every sample of an experience of "
                f"{num_samples} training samples: use a smaller data.batch_size or data.drop_last=false"
            )
        self.num_samples, self.seed, self.world_size, self.epoch = num_samples, seed, world_size, 0
        self.drop_last_batch = int(drop_last_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> list[int]:
        perm = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        order = perm.tolist()
        if self.drop_last_batch:
            return order[: len(order) - len(order) % self.drop_last_batch]
        pad = -self.num_samples % self.world_size
        return order + order[:pad]

    def indices(self, rank: int) -> list[int]:
        """The sample indices rank ``rank`` trains on in the current epoch, in order."""
        return self.permutation()[rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        rank, world = rank_and_world()
        if world != self.world_size:
            raise RuntimeError(f"sampler built for {self.world_size} processes but the process group has {world}")
        return iter(self.indices(rank))

    def __len__(self) -> int:
        if self.drop_last_batch:
            return self.num_samples // self.drop_last_batch * self.drop_last_batch // self.world_size
        return -(-self.num_samples // self.world_size)


def world_size_of(trainer: Any) -> int:
    """The number of training processes a (not yet fitted) Lightning ``Trainer`` will use."""
    from lightning.pytorch.strategies import ParallelStrategy

    if not isinstance(trainer.strategy, ParallelStrategy):
        return 1
    return int(trainer.num_devices) * int(trainer.num_nodes)


def _strategy_name(strategy: Any) -> str:
    if strategy is None:
        return "auto"
    if isinstance(strategy, str):
        return strategy
    return str(strategy.get("_target_", "")) if hasattr(strategy, "get") else type(strategy).__name__


def _num_devices(devices: Any) -> int:
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str):  # "4", "0,1,2" (device ids) or "auto"
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        return int(devices) if devices.isdigit() else 1
    return len(list(devices)) if devices is not None else 1  # a list of device ids


def check_distributed_config(cfg: Any, multirun: bool) -> None:
    """Refuse, before training, the multi-process setups the engine cannot run correctly (raises ``ValueError``
    naming the config key): spawn/fork strategies (their state would not return to the main process between
    experiences), a global batch that does not divide, and a Hydra multirun whose ranks nothing would start."""
    trainer = cfg.trainer
    name = _strategy_name(trainer.get("strategy"))
    world = _num_devices(trainer.get("devices", 1)) * int(trainer.get("num_nodes", 1) or 1)
    if any(s in name.lower() for s in _SPAWNING):
        raise ValueError(
            f"trainer.strategy={name!r} starts new processes for every fit and loses the method's state between "
            "experiences; allowed: 'ddp' (or lightning.pytorch.strategies.DDPStrategy), see conf/trainer/ddp.yaml"
        )
    if world <= 1 or "ddp" not in name.lower():
        return
    per_rank_batch_size(int(cfg.data.batch_size), world)
    tasks = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_NTASKS")
    if multirun and not (tasks and int(tasks.split("(")[0]) > 1) and "LOCAL_RANK" not in os.environ:
        raise ValueError(
            f"trainer.devices={trainer.get('devices')} with trainer.strategy={name!r} inside a Hydra multirun (-m): "
            "Lightning would re-execute the whole sweep for every rank. Run one DDP job per process with "
            "hydra/launcher=slurm hydra.launcher.tasks_per_node=<trainer.devices>, or run single runs without -m"
        )


def requeue_slurm_job() -> bool:
    """Ask SLURM to requeue this job (``scontrol requeue``) from global rank 0; False when not in a SLURM job or when
    ``scontrol`` fails (the reason goes to stderr). Array tasks are named ``ARRAYJOB_TASK`` as SLURM expects."""
    if not is_global_zero():
        return False
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    if not job_id:
        print("requeue_on_preempt: not inside a SLURM job (no SLURM_JOB_ID); not requeued", file=sys.stderr)
        return False
    try:
        res = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"requeue_on_preempt: scontrol requeue {job_id} failed: {err}", file=sys.stderr)
        return False
    if res.returncode:
        print(f"requeue_on_preempt: scontrol requeue {job_id} failed: {res.stderr.strip()}", file=sys.stderr)
        return False
    print(f"requeue_on_preempt: requeued SLURM job {job_id}; it resumes in the same run directory", file=sys.stderr)
    return True


class SigtermLatch:
    """While active (``with``), a SIGTERM is remembered in :attr:`received` instead of ending the process; the previous
    Python-level handler (submitit's) is still called. Inside ``trainer.fit`` Lightning's handler runs first and ends
    the fit; outside it the engine stops at the next experience boundary. Only the main thread can install it."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        if callable(self._previous):
            self._previous(signum, frame)

    def __enter__(self) -> SigtermLatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """``flag`` OR-ed over all ranks (a collective: every rank must call it at the same point); ``flag`` when alone."""
    if not dist_ready() or torch.distributed.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())
