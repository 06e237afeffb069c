"""L2P++ (Wang et al., "Learning to Prompt for Continual Learning", CVPR 2022) in the form used as a baseline by
CODA-Prompt (Smith et al. 2023, reference code GT-RIPL/CODA-Prompt ``models/zoo.py`` ``L2P``): a pool of M prompts
with keys; the query q(x) (CLS of the frozen, un-prompted ViT) picks the top-k prompts by cosine similarity; the
picked prompts are prefix-tuned into block 0 ("L2P++", ``deep: false``) or into blocks 0-4 ("Deep L2P++",
``deep: true``, separate pool per layer). Loss: CE over the current classes + ``key_loss_weight`` *
sum_{b, picked m} (1 - cos(q_b, k_m)) (keys pulled towards the detached queries).

Reference setting: pool 30, length 20, top-k 5. ``prompt_layers`` overrides ``deep`` when given. Departure from the
reference: each sample pulls only its own picked keys (see :mod:`cl.modules.prompt_select`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cl.methods.prompt_base import PromptMethod
from cl.modules.prompt_select import KeyedPromptPool

DEEP_LAYERS = (0, 1, 2, 3, 4)


class L2P(PromptMethod):
    """L2P++ / Deep L2P++: top-k key-query prompt selection on a frozen ViT."""

    def __init__(
        self,
        *args: Any,
        pool_size: int = 30,
        prompt_length: int = 20,
        top_k: int = 5,
        deep: bool = False,
        key_loss_weight: float = 1.0,
        prompt_layers: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        layers = list(prompt_layers) if prompt_layers is not None else list(DEEP_LAYERS if deep else (0,))
        super().__init__(*args, prompt_layers=layers, **kwargs)
        self.key_loss_weight = float(key_loss_weight)
        d = self.embed_dim
        self.prompt = KeyedPromptPool(self.prompt_layers, pool_size, prompt_length, d, d, top_k)

    def select_prompts(self, q: torch.Tensor, train: bool) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        prompts, pull, _ = self.prompt(q)
        return prompts, self.key_loss_weight * pull if train else pull.new_zeros(())
