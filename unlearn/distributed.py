"""``unlearn.run`` under Lightning DDP (``trainer=ddp`` on GPUs, ``trainer=ddp_cpu`` for 2 gloo processes on a CPU).

How a DDP unlearning run works (the ``cl.run`` side is described in ``cl/engine/distributed.py``):

* **Processes.** After every check of the input (bad input stops before any process starts), :func:`start_processes`
  builds a Lightning ``Fabric`` from the trainer config and launches it: from a shell, rank 0 re-executes
  ``python -m unlearn.run ...`` for ranks 1..N-1 with ``hydra.run.dir=<rank 0's run dir> hydra.output_subdir=null``
  (Lightning's subprocess launcher); under SLURM one task per device is started by SLURM. Every rank loads the same
  checkpoint and makes the same split. Lightning ``Trainer`` s started later (``retrain`` replays the training run
  through ``cl.engine.loop``, the baselines through unlearn/training.py) find the process group and train with DDP as
  ``cl.run`` does.
* **Importances** (SSD, LFSSD): :func:`batch_share` gives rank r the batches r, r + W, ... of the 1-process loader and
  ``kernels.fisher_diagonal`` all-reduces the sums and the sample / batch counts, so the importance is the 1-process
  one up to the order of float sums (both the batch-mean and the per-sample estimates). LFSSD's batch mode takes a
  square root per batch and stays unsharded: every rank does the whole pass, and the all-reduce of identical sums and
  counts leaves it exact.
* **Training-based baselines** (finetune, random_label, gradient_ascent, bad_teacher) train with Lightning's
  ``Trainer`` built from the run's trainer config (unlearn/training.py), which finds the process group and trains with
  DDP; their loader is the engine's ``ShardedEpochSampler`` with the global batch split over the ranks, so every step
  holds the 1-process step's samples and DDP's gradient average gives the 1-process step for per-sample-mean losses.
  Bounded difference: when the dataset's size is not a multiple of W, each epoch's permutation is padded with at most
  W - 1 of its own first samples (all in the last step). The relearning attack (unlearn/relearn.py) runs on every rank
  alone (one-device Trainer, no collective). ``retrain`` uses the engine's Lightning DDP.
* **Evaluation once.** :func:`evaluate_once`: rank 0 evaluates (pools, MIA, probe); the per-experience accuracies are
  sharded over all ranks (``cl.engine.evaluate``, exact counts); the result and rank 0's RNG state are broadcast, so
  every rank holds the same report and continues with the 1-process RNG state. Only rank 0 writes splits, the report,
  the checkpoint and the importance cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from cl.engine.distributed import check_distributed_config, dist_ready, rank_and_world


def requested_world_size(trainer_cfg: Any) -> int:
    """Processes a trainer config asks for with a DDP strategy (devices x nodes), 1 for any other strategy."""
    from cl.engine.distributed import _num_devices, _strategy_name

    if "ddp" not in _strategy_name(trainer_cfg.get("strategy")).lower():
        return 1
    return _num_devices(trainer_cfg.get("devices", 1)) * int(trainer_cfg.get("num_nodes", 1) or 1)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def start_processes(cfg: Any) -> int:
    """Start the DDP ranks the training config ``cfg.trainer`` asks for (see the module docstring); returns the world
    size (1: nothing started). ``cfg`` is the checkpoint's training config with the command-line overrides."""
    world = requested_world_size(cfg.trainer)
    if world <= 1:
        return 1
    check_distributed_config(cfg, multirun=_multirun())
    if dist_ready():
        return rank_and_world()[1]
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    trainer = cfg.trainer
    strategy = trainer.get("strategy")
    backend = strategy.get("process_group_backend") if hasattr(strategy, "get") else None
    fabric = Fabric(
        accelerator=str(trainer.get("accelerator", "auto")),
        devices=trainer.get("devices", 1),
        num_nodes=int(trainer.get("num_nodes", 1) or 1),
        strategy=DDPStrategy(process_group_backend=backend),
    )
    fabric.launch()
    return rank_and_world()[1]


class _EveryNth(Sampler[list[int]]):
    """The batches ``rank, rank + world, ...`` of ``batches``."""

    def __init__(self, batches: Iterable[list[int]], rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batches):
            if i % self.world == self.rank:
                yield list(batch)

    def __len__(self) -> int:
        return len(range(self.rank, len(self.batches), self.world))  # type: ignore[arg-type]


def _resampled(loader: DataLoader, batch_sampler: Sampler[list[int]]) -> DataLoader:
    # the same generator object: the new loader consumes it exactly as iterating ``loader`` would (base seed, then the
    # RandomSampler's permutation), so the 1-process batches are drawn
    return DataLoader(
        loader.dataset,
        batch_sampler=batch_sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
    )


def batch_share(data: Any) -> Any:
    """Under DDP, the whole batches ``rank::world`` of a ``DataLoader``; anything else (or alone) unchanged."""
    rank, world = rank_and_world()
    if world == 1 or not isinstance(data, DataLoader) or data.batch_sampler is None:
        return data
    return _resampled(data, _EveryNth(data.batch_sampler, rank, world))


def evaluate_once(model: nn.Module, task: Any, eval_batch_size: int, probe: bool) -> dict[str, Any]:
    """``unlearn.evaluate.evaluate_model`` computed once (see the module docstring); the same dict on every rank."""
    from unlearn.evaluate import evaluate_model

    rank, world = rank_and_world()
    if world == 1:
        return evaluate_model(model, task, eval_batch_size, probe)
    if rank == 0:
        result: dict[str, Any] | None = evaluate_model(model, task, eval_batch_size, probe)
    else:  # the one collective step of evaluate_model: the sharded per-experience accuracies
        from cl.engine.evaluate import evaluate_stream

        evaluate_stream(model, task.ctx.stream, eval_batch_size, task.device)
        result = None
    box = [result, torch.get_rng_state()]
    torch.distributed.broadcast_object_list(box, src=0)
    torch.set_rng_state(box[1])
    return box[0]
