"""CODA-Prompt (Smith et al., "CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free
Continual Learning", CVPR 2023, arXiv 2211.13218; reference code github.com/GT-RIPL/CODA-Prompt, models/zoo.py
and learners/prompt.py).

Per prompted layer (default blocks 0-4): components P (M x L_p x D), keys K and attention vectors A (M x D);
alpha_m(x) = cos(q(x) ⊙ A_m, K_m) over the components active so far (past ones detached), p(x) = sum_m alpha_m P_m,
prefix-tuning of keys/values (:mod:`cl.modules.prompt_coda`, :mod:`cl.modules.prompts`). At every experience t the
components [t*M/N, (t+1)*M/N) are re-initialised by Gram-Schmidt against the earlier ones. Loss:
CE over the current experience's classes + ``ortho_weight`` * sum_l [ortho(K_l) + ortho(A_l) + ortho(P_l)]
(default 0.0 as the current reference code; the paper's 0.1 works too, on CPU as well).

The pool size must divide by the number of experiences (checked before training). Departures from the reference:
see :mod:`cl.modules.prompt_coda` (orthogonalisation against an orthonormal basis of the past components; device-safe
ortho penalty).
"""

from __future__ import annotations

from typing import Any

import torch

from cl.data.stream import Experience
from cl.methods.prompt_base import PromptMethod
from cl.modules.prompt_coda import CodaPool


class CodaPrompt(PromptMethod):
    """CODA-Prompt: decomposed, attention-weighted prompts on a frozen ViT."""

    def __init__(
        self,
        *args: Any,
        pool_size: int = 100,
        prompt_length: int = 8,
        ortho_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if ortho_weight < 0:
            raise ValueError(f"method.ortho_weight={ortho_weight}; allowed: a float >= 0")
        d = self.embed_dim
        self.prompt = CodaPool(self.prompt_layers, pool_size, prompt_length, d, d, ortho_weight)

    def check_stream(self, n_experiences: int) -> None:
        self.prompt.set_num_tasks(n_experiences)

    def on_experience_start(self, experience: Experience) -> None:
        super().on_experience_start(experience)
        self.prompt.start_task(experience.index)

    def select_prompts(self, q: torch.Tensor, train: bool) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        return self.prompt(q, train=train)

    def report_metrics(self) -> dict[str, Any]:
        s, f = self.prompt.task_range()
        return {"prompt_components_active": f, "prompt_pool_size": self.prompt.pool_size}
