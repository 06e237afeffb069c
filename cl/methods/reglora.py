"""RegLoRA (Chen et al., "SEFE: Superficial and Essential Forgetting Eliminator for Multimodal Continual Instruction
Tuning", ICML 2025, arXiv 2505.02486; reference github jinpeng0528/SEFE @2f61efe) and sequential LoRA, its baseline.

Per experience t a fresh LoRA (peft; ``rank``, ``alpha``, ``dropout`` on ``target_modules``) is trained on the frozen
model merged after experience t-1, with the classifier head (image streams). After the experience the top
``top_percent`` % entries of ``|B_t A_t|`` of every adapted matrix are added to the key positions S_{<=t}, and the
LoRA is merged into the base weights (cl/modules/lora.py). While training experience t+1 (Eq. of section 3.2)::

    L = CE + reg_weight * (1 / divisor) * sum_m mean_{(i,j) in S_{<=t}(m)} |(B_{t+1} A_{t+1})_ij|

computed at the key positions only (cl/modules/lora_keys.py). ``reg_weight = 0`` is sequential LoRA (``method=lora``:
the positions are still recorded, as an analysis of what that baseline moves).

Read against the reference code (``key_elements_identification.py``, ``modeling_llama.py``, ``llava_llama.py``):
``k = int(M d_out d_in)`` truncates; ``B A`` is computed in the adapter's dtype and ranked in float32, ties broken
towards the lower flat index (theirs: ``torch.topk``'s undefined order); S_{<=t} lists the newest experience first and
keeps duplicates (``deduplicate=true`` weighs each position once); the penalty uses ``B A`` without LoRA's
``alpha / r`` scale; ``reg_weight`` (their hard-coded 2.5e3) and ``divisor`` (their hard-coded 224 = the number of
adapted matrices of LLaMA-7B; ``null`` here = the number of adapted matrices of this model) are config. Departure: the
penalty is gathered at the key positions instead of forming every ``B @ A`` at every step (the same value and
gradient, see tests/methods/test_reglora.py), and positions are stored as int32 flat indices.

No key positions are identified after the last experience (nothing trains after it). Checkpoints are written between
experiences, when the LoRA is merged: they hold the plain model, the head and the positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cl.data.stream import Experience, Stream
from cl.methods.base import ContinualMethod, OptimizerFactory
from cl.modules.lora import ExperienceLoRA
from cl.modules.lora_keys import KeyPositions
from cl.modules.reglora import RegLoRAAdapters


class RegLoRA(ContinualMethod):
    """A frozen backbone with one merged-after-use LoRA per experience, L1-regularised at earlier key positions."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: Callable[..., Any] | None = None,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: str | Sequence[str] = ("qkv", "proj", "fc1", "fc2"),
        top_percent: float = 2.0,
        reg_weight: float = 2.5e3,
        divisor: float | None = None,
        deduplicate: bool = False,
        penalty_backend: str = "auto",
        mask_past_in_training: bool = False,
        scheduler_interval: str = "epoch",
        name: str = "",
        grad_restriction: float = 0.0,
    ) -> None:
        super().__init__(
            backbone, num_classes, optimizer, scheduler, mask_past_in_training, scheduler_interval, name,
            grad_restriction,
        )  # fmt: skip
        backbone.requires_grad_(False)  # frozen trunk; the LoRA and the head train
        adapted = getattr(backbone, "model", backbone)  # the timm model inside cl.backbones.Backbone
        self.reglora = RegLoRAAdapters(
            adapted, target_modules, rank, alpha, dropout, top_percent, reg_weight, divisor, deduplicate,
            penalty_backend=penalty_backend,
        )  # fmt: skip  # key-position storage sized for the stream in setup_stream

    @property
    def targets(self) -> dict[str, tuple[int, int]]:
        return self.reglora.targets

    @property
    def keys(self) -> KeyPositions:
        return self.reglora.keys

    @property
    def lora(self) -> ExperienceLoRA:
        return self.reglora.lora

    # ----------------------------------------------------------------------------------------------- stream hooks
    def setup_stream(self, stream: Stream) -> None:
        """Size the key-position storage for the stream (one slot per experience but the last); keeps loaded state."""
        super().setup_stream(stream)
        self.reglora.resize(max(0, len(stream) - 1))

    def on_experience_start(self, experience: Experience) -> None:
        super().on_experience_start(experience)
        self.reglora.start()

    def on_experience_end(self, experience: Experience, loader_factory: Callable[[Any], Any]) -> None:
        self.reglora.end(experience.index)

    # ----------------------------------------------------------------------------------------------- training
    def regularizer(self) -> torch.Tensor:
        return self.reglora.regularizer()

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        loss = super().compute_loss(x, y, batch)
        term = self.reglora.loss_term()
        if term is None:
            return loss
        self.step_metrics["train/reg_loss"] = term.detach() / self.reglora.reg_weight
        return loss + term

    def report_metrics(self) -> dict[str, Any]:
        return self.reglora.report()
