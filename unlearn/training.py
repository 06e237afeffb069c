"""Unlearning's training loops on Lightning's ``Trainer``, the project's one trainer (DEVELOPERS.md, "The engine's
training loop").

Who trains here: the training baselines (``finetune``, ``random_label``, ``gradient_ascent``:
unlearn/methods/_train_loop.py), ``bad_teacher`` (through :meth:`unlearn.methods.base.UnlearnTask.train`) and the
relearning attack (unlearn/relearn.py). Each fits a :class:`LossModule` (the model, the method's loss on a batch, its
optimizer built from the trainable parameters in ``configure_optimizers``) with a Trainer from :func:`unlearn_trainer`:
Lightning's ``Trainer`` called with the run's ``trainer`` settings that say where and how to train
(:data:`DEVICE_KEYS`: accelerator, devices, num_nodes, strategy, precision, sync_batchnorm, deterministic), so
``trainer=gpu`` / ``ddp`` / ``ddp_cpu`` and ``precision=bf16-mixed`` apply as in ``cl.run``; the continual recipe's
own keys (``max_epochs``, ``limit_train_batches``, ``gradient_clip_val``, logging) are not the baseline's and are not
used. Nothing is written: no logger, no checkpoint, no progress bar, no model summary. Lightning leaves the module's
train/eval mode as it finds it (2.x): :func:`fit_epochs` trains in train mode and restores the mode afterwards, the
attack keeps eval mode. Lightning's teardown moves the model to the CPU; it is moved back to the task's device.

Data order (:func:`epoch_loader`): the engine's :class:`cl.engine.distributed.ShardedEpochSampler`, so an unlearning
fit sees its data as a ``cl.run`` experience does: epoch e visits ``randperm(n, generator=manual_seed(seed + e))`` in
batches of B (the global batch); under W processes (``trainer=ddp*``) each rank loads B / W samples per step, rank r the
positions r, r + W, ..., so step b of every rank together holds the 1-process batch b, and DDP's gradient average is
the 1-process gradient of a per-sample-mean loss. Bounded difference: when n is not a multiple of W the permutation is
padded with its first ``(-n) % W`` samples (at most W - 1 duplicates per epoch, all in its last step); float sums of
the all-reduce differ in the last bits. B must be a multiple of W (``data.batch_size`` is checked by
``check_distributed_config``, ``bad_teacher``'s ``unlearn_method.batch_size`` by its ``check``). Lightning's own
``DistributedSampler`` is off (``use_distributed_sampler=False``): Lightning applies it only under DDP, so a 1-process
fit would keep another order, and it would split each epoch's permutation per rank into contiguous per-rank batches
rather than the 1-process batches. The loader draws its worker seed from a private generator: the global RNG
(which evaluation and the MIA read afterwards) is not advanced by training.

Cost (experiments/bench/unlearn_fit.py, 2026-12-04, 2 loaded cores, load 2.4-2.9, one torch thread): ``finetune``, 5
epochs (190 steps of 32 on the tests' digits checkpoint, ViT-tiny), median of 3: 6.32 s with the plain loop this
replaced, 5.96 s with Lightning's Trainer (1 epoch: 1.19 s vs 1.40 s; the run-to-run spread at this load is larger
than the difference). Lightning's fixed cost per fit, timed alone (``--fixed``: a 1-batch fit of a linear model, median
of 10): 14-15 ms, ~94 ms for the first fit of a process (the baseline's, in ``unlearn.run``): ~0.1 s per run, against
~31 ms per training step here. It does not matter.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn
from torch.utils.data import DataLoader, Dataset

Loss = Callable[[nn.Module, tuple[Any, ...]], torch.Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

# the run's trainer settings an unlearning fit uses (where and how to train); the continual recipe's are not used
DEVICE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "sync_batchnorm", "deterministic")


class LossModule(pl.LightningModule):
    """``net`` trained on ``loss(net, batch)`` with ``optimizer(trainable parameters of net)``."""

    def __init__(self, net: nn.Module, loss: Loss, optimizer: OptimizerFactory) -> None:
        super().__init__()
        self.net = net
        self.loss_fn, self.optimizer_factory = loss, optimizer

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        return self.loss_fn(self.net, tuple(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([p for p in self.net.parameters() if p.requires_grad])


def unlearn_trainer(trainer_cfg: Any, device: torch.device | None = None, **kwargs: Any) -> pl.Trainer:
    """Lightning's ``Trainer`` with the :data:`DEVICE_KEYS` of ``trainer_cfg`` (the run's ``trainer`` node) and
    ``kwargs`` (``max_epochs``, ``max_steps``, ``callbacks``); with ``device``: one process on that device (no DDP,
    each rank trains alone), at the run's precision. A DDP strategy gets ``find_unused_parameters=True``: an
    unlearning loss is the model's forward alone, which leaves some trainable parameters without a gradient (L2P's and
    DualPrompt's prompt keys, trained by their CL training step's key loss); DDP then skips them as one process does."""
    from hydra.utils import get_class, instantiate
    from lightning.pytorch.strategies import DDPStrategy
    from omegaconf import OmegaConf

    from cl.engine.trainer import quiet_lightning_notices

    quiet_lightning_notices()
    values = OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) else trainer_cfg
    settings = {k: values[k] for k in DEVICE_KEYS if k in values}
    if device is not None:
        for key in ("strategy", "num_nodes", "sync_batchnorm"):
            settings.pop(key, None)
        cuda = device.type == "cuda"
        settings.update(accelerator="gpu" if cuda else device.type, devices=[device.index or 0] if cuda else 1)
    elif isinstance(settings.get("strategy"), dict) and "_target_" in settings["strategy"]:
        node = settings["strategy"]
        extra = {"find_unused_parameters": True} if issubclass(get_class(node["_target_"]), DDPStrategy) else {}
        settings["strategy"] = instantiate(node, **extra)
    elif settings.get("strategy") == "ddp":  # Lightning's registered name for the same setting
        settings["strategy"] = "ddp_find_unused_parameters_true"
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(**settings, **quiet, num_sanity_val_steps=0, use_distributed_sampler=False, **kwargs)


def fit(module: LossModule, trainer: pl.Trainer, loader: DataLoader, device: torch.device) -> None:
    """``trainer.fit(module, loader)``, the model back on ``device`` afterwards (Lightning's teardown moves it to the
    CPU). The datasets are in memory: Lightning's hint to use loader workers is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*does not have many workers", PossibleUserWarning)
        trainer.fit(module, train_dataloaders=loader)
    module.net.to(device)


def epoch_loader(dataset: Dataset, batch_size: int, seed: int, world_size: int) -> DataLoader:
    """This rank's batches of ``dataset`` in the order of the module docstring (``batch_size``: the global batch)."""
    from cl.engine.distributed import ShardedEpochSampler, per_rank_batch_size

    return DataLoader(
        dataset,
        batch_size=per_rank_batch_size(int(batch_size), world_size),
        sampler=ShardedEpochSampler(len(dataset), int(seed), world_size),
        generator=torch.Generator(),  # the worker seed comes from here, not from the global RNG
    )


def fit_epochs(
    model: nn.Module,
    dataset: Dataset,
    loss: Loss,
    optimizer: OptimizerFactory,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    trainer_cfg: Any,
    device: torch.device,
) -> None:
    """``epochs`` passes of ``loss(model, batch)`` over ``dataset`` in train mode (see the module docstring); the
    model's mode is restored afterwards. An empty dataset trains nothing."""
    from cl.engine.distributed import world_size_of

    if len(dataset) == 0:  # type: ignore[arg-type]
        return
    trainer = unlearn_trainer(trainer_cfg, max_epochs=int(epochs))
    loader = epoch_loader(dataset, batch_size, seed, world_size_of(trainer))
    was = model.training
    model.train()
    fit(LossModule(model, loss, optimizer), trainer, loader, device)
    model.train(was)
