"""RegLoRA's model side as one piece for any model a method holds (a timm ViT, a ``transformers`` causal LM): a fresh
peft LoRA per experience merged at its end (cl/modules/lora.py), the key positions of every experience and the
gathered penalty on the next LoRA (cl/modules/lora_keys.py). SEFE, Chen et al., ICML 2025, arXiv 2505.02486; reference
github jinpeng0528/SEFE @2f61efe.

A method calls :meth:`RegLoRAAdapters.start` before fitting an experience, adds :meth:`RegLoRAAdapters.loss_term` to its
task loss, and calls :meth:`RegLoRAAdapters.end` after fitting (identify the key positions, then merge). The term is
``reg_weight * (1 / divisor) * sum_m mean_{S_{<=t}(m)} |(B A)_ij|``; ``divisor=None`` is the number of adapted matrices.
``penalty_backend`` chooses how the gathered term is computed (``kernels.key_penalty``: auto, torch, cpp).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cl.modules.lora import ExperienceLoRA, linear_targets
from cl.modules.lora_keys import KeyPositions
from kernels.key_penalty import BACKENDS as KEY_PENALTY_BACKENDS


class RegLoRAAdapters(nn.Module):
    """Per-experience LoRA on ``model`` (held by reference, not a submodule) and the key positions (a submodule)."""

    def __init__(
        self,
        model: nn.Module,
        target_modules: str | Sequence[str],
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        top_percent: float = 2.0,
        reg_weight: float = 2.5e3,
        divisor: float | None = None,
        deduplicate: bool = False,
        slots: int = 0,
        penalty_backend: str = "auto",
    ) -> None:
        super().__init__()
        if not float(reg_weight) >= 0.0:
            raise ValueError(f"method.reg_weight={reg_weight}; allowed: a float >= 0 (0 = sequential LoRA)")
        if divisor is not None and not float(divisor) > 0.0:
            raise ValueError(f"method.divisor={divisor}; allowed: null (number of adapted matrices) or a float > 0")
        self.targets = linear_targets(model, target_modules)
        self.lora = ExperienceLoRA(model, list(self.targets), rank, alpha, dropout)  # a plain object
        self.top_fraction = float(top_percent) / 100.0
        self.reg_weight = float(reg_weight)
        self.divisor = float(divisor) if divisor is not None else float(len(self.targets))
        self.deduplicate = bool(deduplicate)
        if penalty_backend not in KEY_PENALTY_BACKENDS:
            allowed = ", ".join(KEY_PENALTY_BACKENDS)
            raise ValueError(f"method.penalty_backend={penalty_backend!r}; allowed: {allowed}")
        self.penalty_backend = str(penalty_backend)
        device = next(iter(model.parameters())).device  # the keys live beside the adapted weights (CUDA included)
        self.keys = KeyPositions(self.targets, slots, self.top_fraction).to(device)

    def resize(self, slots: int) -> None:
        """Key-position storage for ``slots`` experiences (a stream's length - 1); keeps it when already that size."""
        if self.keys.slots == slots:
            return
        if int(self.keys.filled) > 0:
            raise ValueError(f"the method holds key positions of a {self.keys.slots + 1}-experience stream")
        self.keys = KeyPositions(self.targets, slots, self.top_fraction).to(self.keys.positions.device)

    def start(self) -> None:
        """Attach the experience's fresh LoRA (zero update; the model frozen, the adapter trainable)."""
        self.lora.attach()

    def regularizer(self) -> torch.Tensor:
        """``(1 / divisor) * sum_m mean_{S_{<=t}(m)} |(B A)_ij|`` of the current LoRA (0 before any key position)."""
        return self.keys.penalty(self.lora.factors(), self.deduplicate, self.penalty_backend) / self.divisor

    def loss_term(self) -> torch.Tensor | None:
        """``reg_weight * regularizer()``, or None when it is off (``reg_weight=0``) or no positions exist yet."""
        if self.reg_weight == 0 or int(self.keys.filled) == 0:
            return None
        return self.reg_weight * self.regularizer()

    def end(self, experience: int) -> None:
        """Add the experience's key positions (unless it is the last), then merge the LoRA into the base weights."""
        self.keys.identify(experience, self.lora.factors())
        self.lora.merge()

    def report(self) -> dict[str, int]:
        return {
            "lora_matrices": len(self.targets),
            "key_positions_per_experience": sum(self.keys.counts.values()),
            "key_positions_bytes": self.keys.nbytes(),
        }
