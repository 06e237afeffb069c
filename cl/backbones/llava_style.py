"""A LLaVA-style multimodal model (Liu et al., LLaVA-1.5, arXiv 2310.03744; the model of SEFE, arXiv 2505.02486):
a timm image encoder, an MLP projector (LLaVA-1.5's ``mlp2x_gelu``: Linear, GELU, Linear) and a ``transformers``
causal LM. Every :data:`cl.data.instruction.IMAGE_TOKEN_INDEX` (-200) in ``input_ids`` is replaced by the image's
projected patch tokens (LLaVA's ``prepare_inputs_labels_for_multimodal``); their labels are -100.

Image features: the patch tokens of the encoder's last block after its final norm (``Backbone.tokens`` without the
class/prefix tokens). LLaVA-1.5 takes CLIP's penultimate layer (``mm_vision_select_layer -2``) without the norm;
``feature_layer`` is not a knob here yet (a choice of this first version, stated for who compares).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cl.data.instruction import IGNORE_INDEX, IMAGE_TOKEN_INDEX


class LlavaStyleModel(nn.Module):
    """``vision`` (cl.backbones.Backbone, a ViT) -> ``projector`` -> tokens spliced into ``lm``'s input embeddings."""

    def __init__(self, vision: nn.Module, lm: nn.Module) -> None:
        super().__init__()
        self.vision, self.lm = vision, lm
        d_vision, d_lm = int(vision.num_features), int(lm.config.hidden_size)
        self.projector = nn.Sequential(nn.Linear(d_vision, d_lm), nn.GELU(), nn.Linear(d_lm, d_lm))

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, N, d_lm)``: the projected patch tokens of each image."""
        tokens = self.vision.tokens(images)
        prefix = int(getattr(self.vision.model, "num_prefix_tokens", 1))
        return self.projector(tokens[:, prefix:])

    def splice(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None, attention_mask: torch.Tensor, images: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(inputs_embeds, attention_mask, labels)`` with each image placeholder replaced by its image's tokens."""
        embed = self.lm.get_input_embeddings()
        feats = self.image_tokens(images) if isinstance(images, torch.Tensor) else None
        rows, labs = [], []
        for b in range(input_ids.shape[0]):
            ids, keep = input_ids[b], attention_mask[b].bool()
            ids = ids[keep]
            lab = labels[b][keep] if labels is not None else None
            where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            if len(where) > 1:
                raise ValueError("one <image> per sample is supported (LLaVA-1.5's single-image conversations)")
            text = embed(ids.clamp_min(0))
            if where:
                if feats is None:
                    raise ValueError(f"sample {b} has an <image> placeholder but the batch has no image tensor")
                k = where[0]
                text = torch.cat([text[:k], feats[b].to(text.dtype), text[k + 1 :]])
                if lab is not None:
                    pad = torch.full((feats.shape[1],), IGNORE_INDEX, dtype=lab.dtype, device=lab.device)
                    lab = torch.cat([lab[:k], pad, lab[k + 1 :]])
            rows.append(text)
            labs.append(lab)
        n = max(r.shape[0] for r in rows)
        out = rows[0].new_zeros((len(rows), n, rows[0].shape[1]))
        mask = torch.zeros((len(rows), n), dtype=attention_mask.dtype, device=attention_mask.device)
        new_labels = None if labels is None else torch.full((len(rows), n), IGNORE_INDEX, device=labels.device)
        for b, r in enumerate(rows):
            out[b, : r.shape[0]], mask[b, : r.shape[0]] = r, 1
            if new_labels is not None:
                new_labels[b, : r.shape[0]] = labs[b]
        return out, mask, new_labels

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: Any = None,
        labels: torch.Tensor | None = None,
    ) -> Any:
        embeds, mask, labels = self.splice(input_ids, labels, attention_mask, images)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, images: Any = None, max_new_tokens: int = 16) -> list[list[int]]:
        """Greedy decoding (the reference evaluates with temperature 0), one prompt at a time; new token ids."""
        out = []
        eos = self.lm.config.eos_token_id
        for b in range(input_ids.shape[0]):
            ids = input_ids[b : b + 1]
            embeds, mask, _ = self.splice(
                ids, None, torch.ones_like(ids), None if images is None else images[b : b + 1]
            )
            new: list[int] = []
            for _ in range(max_new_tokens):
                logits = self.lm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
                token = int(logits.argmax())
                if token == eos:
                    break
                new.append(token)
                step = self.lm.get_input_embeddings()(torch.tensor([[token]], device=embeds.device))
                embeds, mask = torch.cat([embeds, step.to(embeds.dtype)], 1), torch.cat([mask, mask[:, :1]], 1)
            out.append(new)
        return out
