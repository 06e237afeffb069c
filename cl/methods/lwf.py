"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017, arXiv 1606.09282).

Loss at experience t > 0:

    L = CE(masked logits, y) + alpha * T^2 * sum_g KL( softmax(z_old[g] / T) || softmax(z[g] / T) )

where z_old are the logits of the model frozen at the end of experience t-1 on the same inputs (knowledge
distillation, Hinton et al. 2015; T is the temperature, default 2 as in the paper; KL equals the paper's soft-target
cross-entropy up to a constant) and the groups g are:

* task-incremental runs (``scenario=task_il``): one group per old task, that task's classes, i.e. one distillation
  term per old task's head with its own softmax, as the paper's multi-head loss (and Avalanche's ``LwF``, one term per
  entry of ``prev_classes_by_task``);
* class- and domain-incremental runs: one group, every class seen before experience t (the single-head LwF of
  Avalanche/Mammoth).

The old model is a frozen copy kept as a submodule from construction on (so ``state_dict`` keys never change between a
fresh method and a resumed one); ``has_old_model`` tells whether it holds a real snapshot yet. ``class_task`` records
the task label under which each class was learnt (-1: not yet).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cl.data.stream import Experience
from cl.methods.base import ContinualMethod


class LwF(ContinualMethod):
    """Learning without Forgetting: distil the previous model's old-class logits."""

    def __init__(self, *args: Any, alpha: float = 1.0, temperature: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if temperature <= 0:
            raise ValueError(f"method.temperature={temperature}; must be > 0")
        self.alpha = alpha
        self.temperature = temperature
        self.old_model = nn.ModuleDict({"backbone": copy.deepcopy(self.backbone), "head": copy.deepcopy(self.head)})
        self.old_model.requires_grad_(False)
        self.register_buffer("has_old_model", torch.tensor(False))
        self.register_buffer("old_classes", torch.zeros_like(self.seen_classes))
        self.register_buffer("class_task", torch.full((self.num_classes,), -1, dtype=torch.long))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("old_model.")]

    def on_experience_start(self, experience: Experience) -> None:
        self.old_classes.copy_(self.seen_classes)
        super().on_experience_start(experience)
        self.class_task[torch.tensor(experience.classes, device=self.class_task.device)] = int(experience.task_label)

    def distillation_groups(self) -> list[torch.Tensor]:
        """Boolean class masks, one per distillation term (see the module docstring)."""
        if self.scenario != "task":
            return [self.old_classes]
        old_tasks = self.class_task[self.old_classes].unique().tolist()
        return [self.old_classes & (self.class_task == task) for task in old_tasks]

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        logits = self(x)
        loss = F.cross_entropy(self.apply_mask(logits, self.train_logit_mask()), y)
        if bool(self.has_old_model) and bool(self.old_classes.any()):
            self.old_model.eval()
            with torch.no_grad():
                old_logits = self.old_model["head"](self.old_model["backbone"](x))
            t = self.temperature
            for group in self.distillation_groups():
                new, old = F.log_softmax(logits[:, group] / t, dim=1), F.softmax(old_logits[:, group] / t, dim=1)
                loss = loss + self.alpha * t * t * F.kl_div(new, old, reduction="batchmean")
        return loss

    def on_experience_end(self, experience: Experience, loader_factory: Callable[[Dataset], Any]) -> None:
        self.old_model["backbone"].load_state_dict(self.backbone.state_dict())
        self.old_model["head"].load_state_dict(self.head.state_dict())
        self.has_old_model.fill_(True)
