"""The base class of every continual-learning method.

It owns what all methods share, so that a method file states only what is particular to its paper:

* the classifier head over the whole label space and its bookkeeping: classes seen so far, the current experience's
  classes, and the logit masks (class-incremental training masks classes not yet seen; task-incremental training masks
  every class outside the current task; ``mask_past_in_training=True`` also masks past classes, as CODA-Prompt/L2P do);
* the optimizer factory (``optimizer`` and ``scheduler`` are Hydra ``_partial_`` factories). A new Lightning
  ``Trainer`` is used for each experience, so the optimizer and its state are reset at every experience;
* the stream hooks the engine calls: :meth:`on_experience_start`, :meth:`train_dataset`, :meth:`on_experience_end`;
* the evaluation logits (:meth:`eval_logits`), which the engine masks for task-agnostic / task-aware accuracy;
* the optional gradient-restriction loss of IAU (Liu et al. 2025, arXiv 2507.23257), ``grad_restriction=alpha > 0``:
  ``L + alpha * sum_tensors ||d L / d theta_tensor||_2`` (the reference code's per-tensor norms of the batch-mean
  gradient, by double back-propagation), so that a model can be trained to be unlearned by ``unlearn_method=iau``.

Everything a method keeps across experiences must live in buffers, parameters or ``get_extra_state`` so that
``state_dict()`` is the whole method state written to ``task_{t}.ckpt``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cl.data.stream import Experience, Stream

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class ContinualMethod(L.LightningModule):
    """A backbone, a linear head over all classes, masks, and the per-experience hooks."""

    SCENARIOS: ClassVar[tuple[str, ...]] = ("class", "task", "domain")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: Callable[..., Any] | None = None,
        mask_past_in_training: bool = False,
        scheduler_interval: str = "epoch",
        name: str = "",
        grad_restriction: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}; must be positive")
        if not grad_restriction >= 0.0:
            raise ValueError(f"method.grad_restriction={grad_restriction}; allowed: a float >= 0 (0 = off)")
        self.grad_restriction = float(grad_restriction)
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.num_features), num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.mask_past_in_training = mask_past_in_training
        self.num_classes = num_classes
        self.method_name = name or type(self).__name__.lower()
        self.scenario = "class"
        self.register_buffer("seen_classes", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("current_classes", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("experience_index", torch.tensor(-1))
        # detached scalars of the current training step to log beside train/loss, e.g. {"train/prompt_loss": aux}
        self.step_metrics: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------------- stream hooks
    def setup_stream(self, stream: Stream) -> None:
        """Called once before training (and on resume) with the stream; checks the scenario is supported."""
        if stream.scenario not in self.SCENARIOS:
            raise ValueError(
                f"method {type(self).__name__} does not support scenario.name={stream.scenario!r}; "
                f"allowed: {list(self.SCENARIOS)}"
            )
        if stream.num_classes != self.num_classes:
            raise ValueError(f"the stream has {stream.num_classes} classes but the head has {self.num_classes}")
        self.scenario = stream.scenario

    def on_experience_start(self, experience: Experience) -> None:
        """Mark the experience's classes as current and seen; subclasses extend (prompts, masks, ...)."""
        idx = torch.tensor(experience.classes, device=self.seen_classes.device)
        self.current_classes.zero_()
        self.current_classes[idx] = True
        self.seen_classes[idx] = True
        self.experience_index.fill_(experience.index)

    def train_dataset(self, experience: Experience, stream: Stream) -> Dataset:
        """The data to fit on for this experience (``joint`` returns every experience so far)."""
        return experience.train

    def on_experience_end(self, experience: Experience, loader_factory: Callable[[Dataset], Any]) -> None:
        """Called after the experience's fit; ``loader_factory(dataset)`` builds an evaluation-style loader."""

    def report_metrics(self) -> dict[str, Any]:
        """Extra entries for ``metrics.json`` (e.g. FLOPs, parameters updated); merged after every experience."""
        return {}

    # ----------------------------------------------------------------------------------------------- forward/masks
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over all classes, unmasked."""
        return self.head(self.backbone(x))

    def train_logit_mask(self) -> torch.Tensor:
        """Boolean mask of the logits that take part in the training loss of the current experience."""
        if self.scenario == "domain":
            return torch.ones_like(self.seen_classes)
        if self.scenario == "task" or self.mask_past_in_training:
            return self.current_classes
        return self.seen_classes

    @staticmethod
    def apply_mask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Set the logits outside ``mask`` to the dtype's lowest value (not -inf, so no NaN appears in softmax)."""
        return logits.masked_fill(~mask.to(logits.device), torch.finfo(logits.dtype).min)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits used for evaluation (unmasked; the engine applies task-agnostic or task-aware masks)."""
        return self(x)

    # ----------------------------------------------------------------------------------------------- training
    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        """Cross-entropy on the masked logits; methods add their regularisers by overriding this."""
        logits = self.apply_mask(self(x), self.train_logit_mask())
        return F.cross_entropy(logits, y)

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        loss = self.compute_loss(x, y, batch)
        if self.grad_restriction > 0:  # IAU's gradient restriction: + alpha * sum of per-tensor gradient norms
            grads = torch.autograd.grad(loss, self.trainable_parameters(), create_graph=True, allow_unused=True)
            loss = loss + self.grad_restriction * sum(g.norm() for g in grads if g is not None)
        # `train/loss` (and each entry of `step_metrics`, filled by compute_loss) is logged by the engine from this
        # return value (cl/engine/trainer.py: StepLossLogger), not by self.log, which costs ~1 ms per call on CPU
        if not self.step_metrics:
            return loss
        out = {"loss": loss, **self.step_metrics}
        self.step_metrics.clear()
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (those with ``requires_grad``)."""
        return [p for p in self.parameters() if p.requires_grad]

    def optimizer_param_groups(self) -> list[Any]:
        """What the optimizer factory gets as ``params``: the trainable parameters, or a method's parameter groups."""
        return self.trainable_parameters()

    def configure_optimizers(self) -> Any:
        params = self.optimizer_param_groups()
        if not params:
            raise ValueError(f"{type(self).__name__} has no trainable parameters")
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        extra = {}
        if "steps_per_epoch" in inspect.signature(self.scheduler_factory).parameters:  # per-step schedules
            epochs = max(1, int(self.trainer.max_epochs or 1))
            extra["steps_per_epoch"] = max(1, math.ceil(self.trainer.estimated_stepping_batches / epochs))
        scheduler = self.scheduler_factory(optimizer=optimizer, **extra)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}
