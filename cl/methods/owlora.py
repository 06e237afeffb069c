"""OWLoRA with BPPL: the continual method of CoMEL (Lee et al., "Continual Multiple Instance Learning with Enhanced
Localization for Histopathological Whole Slide Image Analysis", ICCV 2025, arXiv 2507.02395; reference github
Hyun1A/CoMEL @9fd6679, ``continual/main/continual_instance/cdatmil_ppl_owlora_trainer.py``).

* Experience 0 trains the whole network (backbone and classifier), no adapter.
* After experience 0 every linear layer of the backbone (all layers outside the classifier) stores the rank-d SVD
  basis of its weights at ``svd_energy`` (0.99) as the first protected subspace, and (``truncate_base``) its weights
  become the rank-d reconstruction (:mod:`cl.modules.weighted_lora`). The engine evaluates after this hook, so row 0 of
  the matrices is measured on the truncated model (the reference evaluates task 0 before truncating).
* Experience t >= 1 trains only adapter t (``U diag(s) D``, rank ``rank``, ``qkv_rank_factor * rank`` for qkv) and the
  classifier; its gradients are projected against every older subspace (``projection``) after backward, and

      L = CE(bag) + seg_coef * L_inst(BPPL) + ortho_lambda * sum_layers (||D D^T - I||^2 + ||U^T U - I||^2) / r^2.

* Inference sums every adapter trained so far: no task id.

``seg_coef`` weighs BPPL's instance loss (:mod:`cl.modules.bppl`) and needs a MIL backbone (one with
``forward_mil``, e.g. :class:`cl.backbones.gdat.GDATMIL`); ``None`` means 1.0 (the reference) on a MIL backbone and 0 on
any other backbone, where OWLoRA is the plain adapter method. The adapters are allocated when the stream is known
(``setup_stream``: one per experience after the first), so a checkpoint always has the same keys.

Departures from the reference, each an option where results depend on it: ``initial_basis="svd"`` (the reference never
loads its basis: ``"reference"``), ``projection="orthonormal"`` (``"reference"``: a sum of unnormalised projections on
the gradients only), ``rank`` is used (the reference's ``--rank`` flag is ignored, rank 16 hard-coded), the learning
rate is the method's optimizer's for every experience (the reference's ``--cl_lr`` is unused too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cl.data.stream import Experience, Stream
from cl.methods.base import ContinualMethod
from cl.modules.bppl import BPPL
from cl.modules.weighted_lora import INITIAL_BASES, PROJECTIONS, OWLoRALinear, attach_owlora


class OWLoRA(ContinualMethod):
    """Orthogonal weighted LoRA per experience, with BPPL instance pseudo-labels on MIL backbones."""

    def __init__(
        self,
        *args: Any,
        rank: int = 16,
        qkv_rank_factor: int = 3,
        ortho_lambda: float = 1.0,
        svd_energy: float = 0.99,
        truncate_base: bool = True,
        initial_basis: str = "svd",
        projection: str = "orthonormal",
        seg_coef: float | None = None,
        bppl_temperature: float = 1.0,
        tau1: float = 0.95,
        tau: float = 0.5,
        positive_classes: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if rank < 1 or qkv_rank_factor < 1:
            raise ValueError(f"method.rank={rank}, method.qkv_rank_factor={qkv_rank_factor}; both must be >= 1")
        if projection not in PROJECTIONS:
            raise ValueError(f"method.projection={projection!r}; allowed: {list(PROJECTIONS)}")
        if initial_basis not in INITIAL_BASES:
            raise ValueError(f"method.initial_basis={initial_basis!r}; allowed: {list(INITIAL_BASES)}")
        if not 0.0 < svd_energy <= 1.0:
            raise ValueError(f"method.svd_energy={svd_energy}; allowed: (0, 1]")
        self.is_mil = callable(getattr(self.backbone, "forward_mil", None))
        if seg_coef is None:
            seg_coef = 1.0 if self.is_mil else 0.0
        if seg_coef < 0 or (seg_coef > 0 and not self.is_mil):
            raise ValueError(
                f"method.seg_coef={seg_coef}: BPPL's instance loss needs a MIL backbone (backbone=gdat_mil) and a "
                "value >= 0; null picks 1.0 on MIL backbones and 0 otherwise"
            )
        self.rank, self.qkv_rank_factor, self.ortho_lambda = int(rank), int(qkv_rank_factor), float(ortho_lambda)
        self.svd_energy, self.truncate_base = float(svd_energy), bool(truncate_base)
        self.initial_basis, self.projection, self.seg_coef = initial_basis, projection, float(seg_coef)
        self.bppl = BPPL(bppl_temperature, tau1, tau, positive_classes)
        self.lora_layers: dict[str, OWLoRALinear] = {}

    # ----------------------------------------------------------------------------------------------- stream hooks
    def setup_stream(self, stream: Stream) -> None:
        super().setup_stream(stream)
        n = max(len(stream) - 1, 0)
        if not self.lora_layers:
            self.lora_layers = attach_owlora(self.backbone, self.rank, n, self.qkv_rank_factor)
            if not self.lora_layers:
                raise ValueError("method=owlora found no linear layer in the backbone to adapt")
        elif len(next(iter(self.lora_layers.values())).adapters) != n:
            raise ValueError(f"OWLoRA was set up for another stream length than {len(stream)} experiences")

    @property
    def adapter_index(self) -> int:
        """The adapter trained in the current experience (-1 in experience 0)."""
        return int(self.experience_index) - 1

    def on_experience_start(self, experience: Experience) -> None:
        super().on_experience_start(experience)
        t = experience.index
        self.requires_grad_(t == 0)
        for layer in self.lora_layers.values():
            layer.adapters.requires_grad_(False)
            layer.active.fill_(t)
            if t > 0:
                layer.adapters[t - 1].requires_grad_(True)
                layer.prepare(t - 1, self.projection)
        self.head.requires_grad_(True)

    def on_experience_end(self, experience: Experience, loader_factory: Callable[[Dataset], Any]) -> None:
        if experience.index == 0:
            for layer in self.lora_layers.values():
                layer.save_initial_basis(self.svd_energy, self.truncate_base, self.initial_basis)

    # ----------------------------------------------------------------------------------------------- training
    def ortho_penalty(self) -> torch.Tensor:
        i = self.adapter_index
        return torch.stack([layer.adapters[i].ortho_penalty() for layer in self.lora_layers.values()]).sum()

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        if not self.is_mil:
            loss = super().compute_loss(x, y, batch)
        else:
            out = self.backbone.forward_mil(x)
            logits = self.apply_mask(self.head(out.bag), self.train_logit_mask())
            loss = F.cross_entropy(logits, y)
            if self.seg_coef > 0:
                probs = self.backbone.instance_probs(out.attention, out.valid)
                inst, kept = self.bppl.loss(logits, y, out.attention, probs, out.instances, out.bag, out.valid)
                loss = loss + self.seg_coef * inst
                self.step_metrics["train/instance_loss"] = inst.detach()
                self.step_metrics["train/instances_kept"] = torch.tensor(float(kept))
        if self.adapter_index >= 0 and self.ortho_lambda > 0:
            penalty = self.ortho_penalty()
            self.step_metrics["train/ortho_penalty"] = penalty.detach()
            loss = loss + self.ortho_lambda * penalty
        return loss

    def on_after_backward(self) -> None:
        if self.adapter_index >= 0:
            for layer in self.lora_layers.values():
                layer.project_grads(self.adapter_index, self.projection)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.adapter_index >= 0 and self.projection == "orthonormal":
            for layer in self.lora_layers.values():
                layer.project_params(self.adapter_index)

    def on_train_epoch_end(self) -> None:
        self.bppl.end_epoch()

    def report_metrics(self) -> dict[str, Any]:
        ranks = {name: int(layer.basis_rank) for name, layer in self.lora_layers.items()}
        return {"owlora_basis_rank": ranks, "bppl_tau2": float(self.bppl.tau2)}
