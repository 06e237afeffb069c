"""LoRA adapters through peft for a stream: one fresh adapter per experience, merged into the base weights at its end.

This is the adapter life cycle of SEFE's RegLoRA and of sequential LoRA (Chen et al., ICML 2025, arXiv 2505.02486;
reference github jinpeng0528/SEFE, ``scripts/Train/*.sh`` + ``scripts/merge_lora_weights.py``): task t trains a new
LoRA on the model merged after task t-1, then ``W <- W + (alpha / r) B A`` and the adapter is removed.

* :func:`linear_targets` resolves ``target_modules`` to the ``nn.Linear`` layers to adapt, with peft's matching rule
  (a name equals a target or ends with ``"." + target``) or ``"all-linear"`` (every linear layer but the output
  embedding, peft's rule for causal LMs: q, k, v, o, gate, up, down of every LLaMA decoder layer, the reference's 224
  matrices for LLaMA-7B). Convolutions are never adapted (the reference adapts linear layers only; timm's
  ``patch_embed.proj`` is a convolution whose name ends in ``proj``).
* :class:`ExperienceLoRA` injects the adapter with ``peft.get_peft_model`` (in place: parameter names of the model stay
  those of the plain model plus ``.base_layer`` / ``.lora_A.experience`` / ``.lora_B.experience``), which freezes
  everything but the adapter and keeps LoRA weights in float32 when the base is bf16/fp16 (``autocast_adapter_dtype``);
  :meth:`ExperienceLoRA.merge` is peft's ``merge_and_unload``, after which the model has its original structure (and
  dtype) again, so checkpoints written between experiences hold a plain model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ADAPTER = "experience"


def _output_embedding(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def linear_targets(model: nn.Module, target_modules: str | Sequence[str]) -> dict[str, tuple[int, int]]:
    """``{module name: (d_out, d_in)}`` of the ``nn.Linear`` layers of ``model`` that LoRA adapts (module docstring)."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if isinstance(target_modules, str):
        if target_modules != "all-linear":
            raise ValueError(
                f"method.target_modules={target_modules!r}; allowed: 'all-linear' or a list of module-name suffixes "
                "(e.g. [qkv, proj, fc1, fc2] for a timm ViT, [q_proj, v_proj] for LLaMA)"
            )
        out = _output_embedding(model)
        chosen = [n for n, m in linears.items() if m is not out]
    else:
        targets = [str(t) for t in target_modules]
        if not targets:
            raise ValueError("method.target_modules is empty; name at least one linear layer (or 'all-linear')")
        chosen = [n for n in linears if any(n == t or n.endswith("." + t) for t in targets)]
    if not chosen:
        examples = list(linears)[:6]
        raise ValueError(
            f"method.target_modules={target_modules!r} matches no nn.Linear of {type(model).__name__}; "
            f"its linear layers are named like {examples}"
        )
    return {n: (linears[n].out_features, linears[n].in_features) for n in chosen}


class ExperienceLoRA:
    """The LoRA of the current experience on ``model`` (in place); not an ``nn.Module``: its weights live in the model.

    ``rank``, ``alpha``, ``dropout`` are peft's ``r``, ``lora_alpha``, ``lora_dropout``; the update is
    ``(alpha / rank) B A`` with ``A`` Kaiming-uniform and ``B = 0`` at injection (peft's default), so a fresh adapter
    starts at zero update.
    """

    def __init__(self, model: nn.Module, targets: Sequence[str], rank: int, alpha: float, dropout: float) -> None:
        if int(rank) < 1:
            raise ValueError(f"method.rank={rank}; must be a positive integer")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"method.dropout={dropout}; allowed: 0 <= dropout < 1")
        self.model, self.targets = model, list(targets)
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self._peft = None

    @property
    def active(self) -> bool:
        return self._peft is not None

    def attach(self) -> None:
        """Inject a fresh adapter into every target (the whole model is frozen, the adapter trainable)."""
        import peft

        if self.active:
            raise RuntimeError("a LoRA is already attached: merge it before starting the next experience")
        config = peft.LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.targets, bias="none"
        )
        self._peft = peft.get_peft_model(self.model, config, adapter_name=ADAPTER, autocast_adapter_dtype=True)

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{target: (A, B)}``: ``A`` is ``(rank, d_in)``, ``B`` is ``(d_out, rank)`` (the live parameters)."""
        if not self.active:
            raise RuntimeError("no LoRA attached")
        modules = dict(self.model.named_modules())
        return {n: (modules[n].lora_A[ADAPTER].weight, modules[n].lora_B[ADAPTER].weight) for n in self.targets}

    def scale(self) -> float:
        """LoRA's ``alpha / rank`` (the merged update is ``scale * B A``)."""
        return self.alpha / self.rank

    def merge(self) -> nn.Module:
        """``W <- W + scale * B A`` in every target (in ``W``'s dtype) and remove the adapter; returns the model."""
        if not self.active:
            raise RuntimeError("no LoRA attached")
        model = self._peft.merge_and_unload()
        self._peft = None
        if model is not self.model:  # peft merges in place; guard against a future copy
            raise RuntimeError("peft's merge_and_unload returned a new model; the method holds the old one")
        return model
