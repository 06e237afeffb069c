"""DualPrompt (Wang et al., "DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning", ECCV 2022) as
implemented for the CODA-Prompt comparison (Smith et al. 2023, reference code GT-RIPL/CODA-Prompt ``models/zoo.py``
``DualPrompt``): a shared G-prompt (length 6) prefix-tuned into blocks 0-1 and an E-prompt pool with one prompt
(length 20) and one key per experience, prefix-tuned into blocks 2-4 (separate keys per layer, the reference's
choice, its issue #3). Training on experience t uses E-prompt t (task-id bootstrap) and adds
``key_loss_weight`` * sum_b (1 - cos(q_b, k_t)); inference picks the E-prompt whose key best matches q(x) (top-1).

``pool_size`` (E-prompts) must be at least the number of experiences (the presets use ``${scenario.n_experiences}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cl.methods.prompt_base import PromptMethod
from cl.modules.prompt_select import KeyedPromptPool, SharedPrompt


class DualPrompt(PromptMethod):
    """DualPrompt: G-prompts shared by all tasks, E-prompts chosen by key matching."""

    def __init__(
        self,
        *args: Any,
        pool_size: int = 10,
        prompt_length: int = 20,
        g_prompt_length: int = 6,
        g_layers: Sequence[int] = (0, 1),
        e_layers: Sequence[int] = (2, 3, 4),
        key_loss_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        g, e = [int(i) for i in g_layers], [int(i) for i in e_layers]
        if set(g) & set(e):
            raise ValueError(f"method.g_layers={g} and method.e_layers={e} overlap; allowed: disjoint block lists")
        super().__init__(*args, prompt_layers=sorted(g + e), **kwargs)
        self.key_loss_weight = float(key_loss_weight)
        d = self.embed_dim
        self.g_prompt = SharedPrompt(g, g_prompt_length, d)
        self.prompt = KeyedPromptPool(e, pool_size, prompt_length, d, d, top_k=1)

    def check_stream(self, n_experiences: int) -> None:
        if self.prompt.pool_size < n_experiences:
            raise ValueError(
                f"method.pool_size={self.prompt.pool_size} E-prompts for scenario.n_experiences={n_experiences}: "
                "DualPrompt needs one E-prompt per experience; allowed: pool_size >= n_experiences"
            )

    def select_prompts(self, q: torch.Tensor, train: bool) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        task = int(self.experience_index) if train else None
        prompts, pull, _ = self.prompt(q, task=task)
        prompts.update(self.g_prompt(q.shape[0]))
        return prompts, self.key_loss_weight * pull if train else pull.new_zeros(())
