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
        self.num_features = d_lm
        self.lm_from_config = False  # True: a random LM built from a config (its vocabulary may be resized)
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
        if isinstance(images, torch.Tensor):
            feats: Any = self.image_tokens(images)
        elif images is not None and any(im is not None for im in images):  # a batch mixing text-only samples
            feats = [None if im is None else self.image_tokens(im[None])[0] for im in images]
        else:
            feats = None
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
                if feats is None or feats[b] is None:
                    raise ValueError(f"sample {b} has an <image> placeholder but no image")
                k = where[0]
                text = torch.cat([text[:k], feats[b].to(text.dtype), text[k + 1 :]])
                if lab is not None:
                    pad = torch.full((feats[b].shape[0],), IGNORE_INDEX, dtype=lab.dtype, device=lab.device)
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
    def generate(
        self,
        input_ids: torch.Tensor,
        images: Any = None,
        max_new_tokens: int = 16,
        attention_mask: torch.Tensor | None = None,
        eos_token_id: int | None = None,
    ) -> list[list[int]]:
        """Greedy decoding (the reference evaluates with temperature 0) of a right-padded batch of prompts: the
        spliced prompts are left-aligned to their ends, positions counted from each prompt's start, and decoded with
        the LM's key/value cache; returns each prompt's new token ids up to (without) ``eos_token_id``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        eos = self.lm.config.eos_token_id if eos_token_id is None else eos_token_id
        embeds, mask, _ = self.splice(input_ids, None, attention_mask, images)
        lengths = mask.sum(1)
        n = embeds.shape[1]
        left, left_mask = torch.zeros_like(embeds), torch.zeros_like(mask)
        for b, k in enumerate(lengths.tolist()):
            left[b, n - k :], left_mask[b, n - k :] = embeds[b, :k], 1
        positions = (left_mask.cumsum(1) - 1).clamp_min(0)
        out = self.lm(inputs_embeds=left, attention_mask=left_mask, position_ids=positions, use_cache=True)
        new: list[list[int]] = [[] for _ in range(len(lengths))]
        done = torch.zeros(len(lengths), dtype=torch.bool, device=embeds.device)
        step_pos = lengths.clone()
        for i in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1)
            done |= token == eos
            for b in (~done).nonzero().flatten().tolist():
                new[b].append(int(token[b]))
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            step = self.lm.get_input_embeddings()(token[:, None]).to(embeds.dtype)
            left_mask = torch.cat([left_mask, left_mask.new_ones((len(lengths), 1))], 1)
            out = self.lm(
                inputs_embeds=step,
                attention_mask=left_mask,
                position_ids=step_pos[:, None],
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            step_pos = step_pos + 1
        return new


def _load_projector(model: LlavaStyleModel, path: str) -> None:
    """LLaVA's pretrained ``mm_projector.bin`` (keys ``model.mm_projector.{0,2}.{weight,bias}``) into the projector."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"backbone.projector_weights={path!r}: no such file (LLaVA-1.5's mm_projector.bin)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = {k.split("mm_projector.")[-1]: v for k, v in state.items() if "mm_projector." in k}
    model.projector.load_state_dict(own or state)


def build_llava_style(
    vision: nn.Module,
    lm_path: str | None = None,
    lm_config: dict[str, Any] | None = None,
    projector_weights: str | None = None,
    lm_dtype: str = "float32",
) -> LlavaStyleModel:
    """The model of ``backbone=llava_*``: ``vision`` (a cl.backbones.Backbone), a causal LM either loaded from the
    local folder ``lm_path`` (e.g. vicuna-7b-v1.5, in ``lm_dtype``; never downloads) or built at random from
    ``lm_config`` (a ``LlamaConfig``'s keys: the tiny offline LM, whose vocabulary is sized to the stream's tokenizer
    by the method), and optionally LLaVA's pretrained projector (``projector_weights``)."""
    import transformers

    if (lm_path is None) == (lm_config is None):
        raise ValueError("backbone: give exactly one of lm_path (a local pretrained causal LM) or lm_config")
    if lm_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"backbone.lm_dtype={lm_dtype!r}; allowed: float32, bfloat16, float16")
    if lm_path is not None:
        from pathlib import Path

        if not Path(lm_path).is_dir():
            raise FileNotFoundError(f"backbone.lm_path={lm_path!r}: not a folder with a saved causal LM")
        lm = transformers.AutoModelForCausalLM.from_pretrained(
            lm_path, local_files_only=True, torch_dtype=getattr(torch, lm_dtype)
        )
    else:
        lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(**dict(lm_config))).to(getattr(torch, lm_dtype))
    model = LlavaStyleModel(vision, lm)
    model.lm_from_config = lm_config is not None
    if projector_weights:
        _load_projector(model, projector_weights)
    return model
