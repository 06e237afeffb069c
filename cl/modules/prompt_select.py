"""Key-query prompt pools of L2P and DualPrompt, as implemented for the CODA-Prompt comparison (GT-RIPL/CODA-Prompt
``models/zoo.py`` ``L2P`` / ``DualPrompt``).

* L2P (Wang et al., "Learning to Prompt for Continual Learning", CVPR 2022), "L2P++" of the CODA-Prompt paper:
  a pool of M prompts (length L) with keys k_m per prompted layer; the query q(x) (CLS of the frozen, un-prompted
  ViT) selects the top-N prompts by cosine similarity gamma(q, k_m); the selected keys are pulled towards the query
  with the surrogate loss sum_{selected} (1 - gamma(q, k_m)) (paper Eq. 5; q is detached). Prefix-tuning at layer 0
  ("L2P++") or at layers 0-4 ("Deep L2P++").
* DualPrompt (Wang et al., ECCV 2022): a shared G-prompt (length L_g) at layers 0-1 and an E-prompt pool with one
  prompt and one key per task at layers 2-4. Training on task t uses E-prompt t (task-id bootstrap) and pulls its key
  with sum_b (1 - gamma(q_b, k_t)); inference selects the top-1 E-prompt by gamma. As in the reference (its issue #3)
  every E-layer has its own keys.

Departure from the reference code: its top-k pull loss ``(1 - cos_sim[:, k_idx]).sum()`` indexes every sample's
similarities with every sample's top-k indices (a B x B x k sum); here each sample pulls only its own selected keys,
as in the L2P paper. Prompts and keys are initialised U(0, 1) as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_to_keys(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``gamma[b, m] = cos(q_b, k_m)`` with the query detached (the reference's ``normalize(q).detach()``)."""
    return F.normalize(q.detach(), dim=1) @ F.normalize(keys, dim=1).T


class KeyedPromptPool(nn.Module):
    """Per prompted layer: ``M`` prompts ``(M, L, D)`` and keys ``(M, D_k)``; selection by top-k or by task id."""

    def __init__(self, layers: list[int], pool_size: int, length: int, dim: int, key_dim: int, top_k: int) -> None:
        super().__init__()
        if pool_size < 1 or length < 0 or not 1 <= top_k <= pool_size:
            raise ValueError(
                f"method.pool_size={pool_size}, method.prompt_length={length}, method.top_k={top_k}; "
                "allowed: pool_size >= 1, prompt_length >= 0, 1 <= top_k <= pool_size"
            )
        self.layers = [int(i) for i in layers]
        self.pool_size, self.length, self.top_k = pool_size, length, top_k
        self.prompts = nn.ParameterDict({str(i): nn.Parameter(torch.rand(pool_size, length, dim)) for i in self.layers})
        self.keys = nn.ParameterDict({str(i): nn.Parameter(torch.rand(pool_size, key_dim)) for i in self.layers})

    def forward(
        self, q: torch.Tensor, task: int | None = None
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor, dict[int, torch.Tensor]]:
        """Prompts ``{layer: (B, n, L, D)}``, the key pull loss, and the selected indices ``{layer: (B, n)}``.

        ``task`` given (DualPrompt training): every sample uses prompt ``task`` (n = 1); otherwise the top-k by
        cosine similarity (n = top_k). The loss is computed either way (it is only added to the objective in training).
        """
        prompts: dict[int, torch.Tensor] = {}
        chosen: dict[int, torch.Tensor] = {}
        loss = q.new_zeros(())
        for layer in self.layers:
            i = str(layer)
            gamma = cosine_to_keys(q, self.keys[i])
            if task is not None:
                if not 0 <= task < self.pool_size:
                    raise ValueError(f"task {task} has no E-prompt: the pool has {self.pool_size} (method.pool_size)")
                idx = torch.full((q.shape[0], 1), task, dtype=torch.long, device=q.device)
            else:
                idx = gamma.topk(self.top_k, dim=1).indices
            loss = loss + (1.0 - gamma.gather(1, idx)).sum()
            prompts[layer] = self.prompts[i][idx]
            chosen[layer] = idx
        return prompts, loss, chosen


class SharedPrompt(nn.Module):
    """DualPrompt's G-prompt: one ``(L_g, D)`` prompt per layer shared by all tasks and inputs."""

    def __init__(self, layers: list[int], length: int, dim: int) -> None:
        super().__init__()
        self.layers = [int(i) for i in layers]
        self.prompts = nn.ParameterDict({str(i): nn.Parameter(torch.rand(length, dim)) for i in self.layers})

    def forward(self, batch_size: int) -> dict[int, torch.Tensor]:
        return {layer: self.prompts[str(layer)].expand(batch_size, 1, -1, -1) for layer in self.layers}
