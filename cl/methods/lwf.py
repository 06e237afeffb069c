"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017).

Loss at experience t > 0:  L = CE(masked logits, y) + alpha * T^2 * KL( softmax(z_old / T) || softmax(z / T) )
over the logits of the classes seen before experience t, where z_old are the logits of the model frozen at the end of
experience t-1 on the same inputs (knowledge distillation, Hinton et al. 2015; T is the temperature, default 2 as in
the paper). The paper's multi-head task-IL form is the special case of the task scenario; in class-incremental
scenarios this is the usual single-head LwF used by Avalanche/Mammoth.

The old model is a frozen copy kept as a submodule from construction on (so ``state_dict`` keys never change between a
fresh method and a resumed one); ``has_old_model`` tells whether it holds a real snapshot yet.
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

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("old_model.")]

    def on_experience_start(self, experience: Experience) -> None:
        self.old_classes.copy_(self.seen_classes)
        super().on_experience_start(experience)

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        logits = self(x)
        loss = F.cross_entropy(self.apply_mask(logits, self.train_logit_mask()), y)
        if bool(self.has_old_model) and bool(self.old_classes.any()):
            self.old_model.eval()
            with torch.no_grad():
                old = self.old_model["head"](self.old_model["backbone"](x))[:, self.old_classes]
            new = logits[:, self.old_classes]
            t = self.temperature
            kd = F.kl_div(F.log_softmax(new / t, dim=1), F.softmax(old / t, dim=1), reduction="batchmean")
            loss = loss + self.alpha * t * t * kd
        return loss

    def on_experience_end(self, experience: Experience, loader_factory: Callable[[Dataset], Any]) -> None:
        self.old_model["backbone"].load_state_dict(self.backbone.state_dict())
        self.old_model["head"].load_state_dict(self.head.state_dict())
        self.has_old_model.fill_(True)
