"""timm backbones behind one small wrapper.

The wrapper builds a timm model without its classifier (``num_classes=0``) and exposes what continual-learning methods
need:

* ``forward(x)`` / ``features(x)``: the pooled feature vector (pre-logits), shape ``(B, num_features)``;
* ``tokens(x)``: the token sequence after the last block and norm (ViTs), shape ``(B, N, D)``;
* ``block_tokens(x)``: the patch tokens after the last block, before the final norm (timm's
  ``forward_intermediates``; prefix tokens dropped), shape ``(B, N_patches, D)`` (GCAB's trunk features);
* ``blocks``: the transformer blocks (ViTs) so that prompts or gates can be injected into chosen blocks;
* ``wrap_attention(block_ids, factory)``: replaces ``blocks[i].attn`` with ``factory(i, attn)`` (a module that keeps
  timm's own projections; see :mod:`cl.modules` for prefix-tuning), without copying or forking timm's code.

Weights, offline first:

* ``weights=PATH``: a local ``.pth``/``.safetensors``/``.bin`` file, loaded through timm's ``pretrained_cfg_overlay``
  (timm adapts patch embeddings and position embeddings; classifier keys are dropped), or an original AugReg ``.npz``
  (e.g. the ViT-B/16 file of conf/backbone/vit_b16.yaml), read by the ViT's own ``load_pretrained``;
* ``pretrained=True`` without ``weights``: the Hugging Face cache (``HF_HUB_OFFLINE=1`` is honoured by huggingface_hub);
* neither: random init (the tiny CPU ViT and the reduced ResNet-18 for 32x32 inputs).

The reduced ResNet-18 (``cifar_stem=True``) is timm's ``resnet18`` with a 3x3 stride-1 first convolution and no
max-pool, as used for 32x32 inputs in GEM/Mammoth; ``channels`` sets the widths (GEM's "reduced" net uses 20 filters).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn


class BackboneWeightsError(FileNotFoundError):
    """Pretrained weights were asked for but are not available offline."""


class Backbone(nn.Module):
    """A timm model without classifier; see the module docstring for the exposed views."""

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights: str | None = None,
        in_chans: int = 3,
        img_size: int | None = None,
        cifar_stem: bool = False,
        channels: Sequence[int] | None = None,
        **model_kwargs,
    ) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise ValueError(
                f"backbone.name={name!r} is not a timm model; examples: vit_tiny_patch16_224, vit_base_patch16_224, "
                "resnet18 (see timm.list_models())"
            )
        kwargs = dict(model_kwargs)
        if img_size is not None and name.startswith(("vit", "deit", "convit")):
            kwargs["img_size"] = img_size
        if channels is not None:
            kwargs["channels"] = tuple(channels)
            kwargs.setdefault("stem_width", channels[0])
        load_pretrained = bool(pretrained or weights)
        if weights:
            path = Path(os.path.expanduser(str(weights)))
            if not path.is_file():
                raise BackboneWeightsError(
                    f"backbone.weights={weights!r}: no such file. Put the pretrained weights of {name} there "
                    f"(a timm/HF .safetensors, .pth or .bin state dict), or set backbone.weights=null and "
                    f"backbone.pretrained=true to use the Hugging Face cache."
                )
            # custom_load: True for an original big_vision/AugReg .npz (the ViT's own npz loader reads it), else
            # False explicitly: timm < 1.0.31 keeps the registry's custom_load=True for a state-dict file and fails
            custom_load = path.suffix == ".npz"
            kwargs["pretrained_cfg_overlay"] = {"file": str(path), "num_classes": 0, "custom_load": custom_load}
        try:
            self.model = timm.create_model(name, pretrained=load_pretrained, num_classes=0, in_chans=in_chans, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:  # offline hub misses surface as OSError/LocalEntryNotFound
            if load_pretrained and not weights:
                raise BackboneWeightsError(
                    f"backbone.pretrained=true but the weights of {name} are not in the Hugging Face cache "
                    f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}). Either download them once on a "
                    f"machine with network (`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`) "
                    f"and copy ~/.cache/huggingface, or pass backbone.weights=PATH to a local file. Cause: {err}"
                ) from err
            raise
        if cifar_stem:
            if not hasattr(self.model, "conv1"):
                raise ValueError(f"backbone.cifar_stem=true needs a ResNet-like model with conv1; got {name}")
            out = self.model.conv1.out_channels
            self.model.conv1 = nn.Conv2d(in_chans, out, kernel_size=3, stride=1, padding=1, bias=False)
            self.model.maxpool = nn.Identity()
        self.name = name
        self.num_features: int = int(self.model.num_features)
        self.is_vit = hasattr(self.model, "blocks") and hasattr(self.model, "patch_embed")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature vector ``(B, num_features)``."""
        return self.model(x)

    features = forward

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Token sequence ``(B, N, D)`` after the last block (and final norm) of a ViT."""
        self._require_vit("tokens")
        return self.model.forward_features(x)

    def block_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, N_patches, D)`` after the last block, before the final norm (prefix tokens dropped)."""
        self._require_vit("block_tokens")
        out = self.model.forward_intermediates(x, indices=1, norm=False, output_fmt="NLC", intermediates_only=True)
        return out[-1]

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool a token sequence to the feature vector exactly as the model's own head path does."""
        self._require_vit("pool")
        return self.model.forward_head(tokens, pre_logits=True)

    @property
    def blocks(self) -> nn.Sequential:
        """The ViT's transformer blocks (``model.blocks``)."""
        self._require_vit("blocks")
        return self.model.blocks

    def wrap_attention(self, block_ids: Sequence[int], factory: Callable[[int, nn.Module], nn.Module]) -> None:
        """Replace ``blocks[i].attn`` by ``factory(i, original_attn)`` for each ``i`` in ``block_ids``."""
        blocks = self.blocks
        for i in block_ids:
            if not 0 <= i < len(blocks):
                raise ValueError(f"prompt layer {i} out of range: the backbone has blocks 0..{len(blocks) - 1}")
            blocks[i].attn = factory(i, blocks[i].attn)

    def _require_vit(self, what: str) -> None:
        if not self.is_vit:
            raise TypeError(f"Backbone.{what} needs a ViT backbone; {self.name} has no transformer blocks")
