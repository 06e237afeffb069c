"""Linear probe: a linear head trained on the features of a frozen (pre-trained) backbone, experience after
experience, with the class masking of the prompt methods (CODA-Prompt, Smith et al., CVPR 2023, arXiv 2211.13218;
reference code GT-RIPL/CODA-Prompt ``learners/prompt.py``: cross-entropy over the current experience's classes only,
``mask_past_in_training=True``; evaluation over all seen classes).

It is the prompt methods' training without prompts: the same head, loss, masks and optimizer, on the un-prompted
features, so a prompt method's gain over it is what its prompts add. With ``mask_past_in_training=False`` the loss
covers every class seen so far (the plain class-incremental head; past classes then only receive negative gradient).

The backbone runs in evaluation mode under ``no_grad`` (no activation is kept for a backward through it); any
backbone works (ViT or CNN).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cl.data.stream import Experience
from cl.methods.base import ContinualMethod


class LinearProbe(ContinualMethod):
    """A linear head on frozen features, CE over the current experience's classes by default."""

    step_flops_by_batch = True  # a step's FLOPs follow from its batch's shapes (cl/methods/base.py)

    def __init__(self, *args: Any, mask_past_in_training: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, mask_past_in_training=mask_past_in_training, **kwargs)
        self.backbone.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The head only (the backbone is frozen)."""
        return list(self.head.parameters())

    def on_experience_start(self, experience: Experience) -> None:
        super().on_experience_start(experience)
        self.backbone.eval()

    def on_train_epoch_start(self) -> None:
        self.backbone.eval()  # Lightning's model.train() at fit start would switch the frozen backbone back
