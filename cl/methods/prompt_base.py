"""What L2P, DualPrompt and CODA-Prompt share, as in the CODA-Prompt reference code (GT-RIPL/CODA-Prompt
``models/zoo.py`` ``ViTZoo.forward`` and ``learners/prompt.py`` ``Prompt``):

* a frozen ViT: only the prompt module and the linear head are trained (``trainable_parameters``);
* the query pass: q(x) = CLS token of the last layer (after the final norm) of the *un-prompted* frozen ViT, computed
  under ``no_grad`` by the same backbone with no prompt in the context (so the ViT runs twice per batch);
* the prompted pass: the prompts chosen from q(x) are injected into the chosen blocks (prefix-tuning by default,
  ``insertion: tokens`` for prompt-tuning; :mod:`cl.modules.prompts`), and the head reads the pooled output (CLS);
* head masking of past classes in training ("ce with heuristic": the CE runs over the current experience's classes
  only, ``mask_past_in_training=True``); evaluation uses all seen classes (the engine's task-agnostic mask);
* the optimizer (and scheduler) rebuilt at every experience (the engine builds a new Trainer per experience).

Loss per batch: CE(masked logits, y) + the prompt module's own loss (ortho penalty or key pull), see subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl.data.stream import Experience, Stream
from cl.methods.base import ContinualMethod
from cl.modules.prompts import PromptContext, attach_prompts


class PromptMethod(ContinualMethod):
    """A frozen ViT with prompts in ``prompt_layers`` chosen from the query; subclasses build ``self.prompt``."""

    SCENARIOS = ("class", "task", "domain")

    def __init__(
        self,
        *args: Any,
        prompt_layers: Sequence[int] = (0, 1, 2, 3, 4),
        insertion: str = "prefix",
        mask_past_in_training: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, mask_past_in_training=mask_past_in_training, **kwargs)
        if not getattr(self.backbone, "is_vit", False):
            raise ValueError(
                f"method.name={self.method_name!r} needs a ViT backbone (prompts go into transformer blocks); "
                f"backbone.name={getattr(self.backbone, 'name', '?')!r} has none"
            )
        self.backbone.requires_grad_(False)
        self.prompt_layers = [int(i) for i in prompt_layers]
        self.ctx: PromptContext = attach_prompts(self.backbone, self.prompt_layers, insertion)
        self.embed_dim = int(self.backbone.num_features)

    # ------------------------------------------------------------------------------------------- to override
    def select_prompts(
        self, q: torch.Tensor, train: bool
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:  # pragma: no cover - abstract
        """``({layer: (B, n, L, D)}, auxiliary loss)`` for queries ``q`` (B, D)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- passes
    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """CLS token of the un-prompted frozen ViT (after its final norm), ``(B, D)``."""
        return self.backbone.tokens(x)[:, 0]

    def prompted_features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features of the prompted pass and the prompt module's loss."""
        prompts, aux = self.select_prompts(self.query(x), train)
        with self.ctx.use(prompts):
            feats = self.backbone.pool(self.backbone.tokens(x))
        return feats, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.prompted_features(x, train=False)[0])

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        feats, aux = self.prompted_features(x, train=True)
        logits = self.apply_mask(self.head(feats), self.train_logit_mask())
        ce = F.cross_entropy(logits, y)
        self.step_metrics["train/prompt_loss"] = aux.detach()  # logged by the engine with train/loss (no self.log)
        return ce + aux

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The prompt module and the head (the backbone is frozen)."""
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("backbone.")]

    # ------------------------------------------------------------------------------------------- stream hooks
    def setup_stream(self, stream: Stream) -> None:
        super().setup_stream(stream)
        self.check_stream(len(stream))

    def check_stream(self, n_experiences: int) -> None:
        """Validate the prompt module against the number of experiences (before training); subclasses extend."""

    def on_experience_start(self, experience: Experience) -> None:
        super().on_experience_start(experience)
        self.backbone.eval()  # frozen: dropout/drop-path off in both passes

    def on_train_epoch_start(self) -> None:
        self.backbone.eval()  # Lightning's model.train() at fit start would switch the frozen ViT back
