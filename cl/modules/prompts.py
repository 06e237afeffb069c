"""Prompt injection into chosen blocks of a timm ViT, without copying or forking timm's ViT code.

Two insertion styles, both driven by a :class:`PromptContext` that holds, for the duration of one forward pass, the
prompt of each prompted layer (set by ``with ctx.use({layer: prompt}): backbone(x)``):

* **prefix-tuning** (Li & Liang 2021; as used by L2P++/DualPrompt/CODA-Prompt in GT-RIPL/CODA-Prompt
  ``models/vit.py``): the attention module ``blocks[l].attn`` is wrapped by :class:`PrefixAttention`. Its prompt
  ``p`` (shape ``(B, n, L, D)``: ``n`` selected prompts of length ``L``) is split per prompt into the first ``L/2``
  rows ``p_k`` and the last ``L/2`` rows ``p_v``; they are prepended to the keys and the values of the multi-head
  attention (per head), the queries are unchanged, so the block's token count does not change::

      Attn(x) = softmax( q(x) [p_k ; k(x)]^T / sqrt(d_h) ) [p_v ; v(x)]

  The wrapper calls timm's own ``qkv``, ``q_norm``/``k_norm``, ``norm``, ``proj`` submodules of the wrapped module.
* **prompt-tuning** (Lester et al. 2021; VPT, Jia et al. 2022): the block ``blocks[l]`` is wrapped by
  :class:`PromptTokensBlock`, which inserts the ``n*L`` prompt tokens into the block's input sequence right after
  the prefix tokens (CLS). With ``replace=True`` (VPT-deep) the tokens inserted at an earlier prompted layer are
  replaced; otherwise they accumulate. The CLS token stays at position 0.

A layer without a prompt in the context (or with a zero-length prompt) runs the original timm module unchanged, so
an empty layer list or a zero-length prompt reproduces the frozen backbone's output exactly; this is also how the
un-prompted query pass of L2P/DualPrompt/CODA-Prompt runs on the same backbone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

INSERTIONS = ("prefix", "tokens")


class PromptContext:
    """The prompts of the current forward pass: ``layer -> (B, n, L, D)`` tensor (empty outside :meth:`use`)."""

    def __init__(self, layers: Sequence[int], insertion: str, num_prefix_tokens: int = 1, replace: bool = True):
        self.layers = tuple(int(i) for i in layers)
        self.insertion = insertion
        self.num_prefix_tokens = num_prefix_tokens
        self.replace = replace
        self.prompts: dict[int, torch.Tensor] = {}
        self.inserted = 0  # prompt tokens currently inside the sequence (prompt-tuning only)

    @contextmanager
    def use(self, prompts: Mapping[int, torch.Tensor]) -> Iterator[None]:
        """Make ``prompts`` visible to the wrapped layers for the forward passes inside the ``with`` block."""
        unknown = sorted(set(prompts) - set(self.layers))
        if unknown:
            raise ValueError(f"prompts given for layers {unknown}, which are not prompted; prompted: {self.layers}")
        for layer, p in prompts.items():
            if p.dim() != 4:
                raise ValueError(f"the prompt of layer {layer} must be (B, n, L, D); got shape {tuple(p.shape)}")
        self.prompts, self.inserted = dict(prompts), 0
        try:
            yield
        finally:
            self.prompts, self.inserted = {}, 0

    def get(self, layer: int) -> torch.Tensor | None:
        p = self.prompts.get(layer)
        return None if p is None or p.shape[1] * p.shape[2] == 0 else p


def split_prefix(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(B, n, L, D)`` prompts into key and value prefixes, each ``(B, n*L/2, D)``: rows ``[:L/2]`` of every
    prompt go to the keys and rows ``[L/2:]`` to the values (the reference code's ``Ek = P[..., :i, :]``)."""
    length = p.shape[2]
    if length % 2:
        raise ValueError(f"a prefix-tuning prompt needs an even length (key half + value half); got L={length}")
    half = length // 2
    return p[:, :, :half].flatten(1, 2), p[:, :, half:].flatten(1, 2)


class PrefixAttention(nn.Module):
    """timm ``Attention`` with the context's prompt prepended to its keys and values (prefix-tuning)."""

    def __init__(self, attn: nn.Module, layer: int, ctx: PromptContext) -> None:
        super().__init__()
        for needed in ("qkv", "proj", "num_heads", "head_dim"):
            if not hasattr(attn, needed):
                raise TypeError(f"prefix-tuning needs a timm Attention with {needed!r}; got {type(attn).__name__}")
        self.attn = attn
        self.layer = layer
        self.ctx = ctx

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        prompt = self.ctx.get(self.layer)
        if prompt is None:
            return self.attn(x, attn_mask=attn_mask, **kwargs) if attn_mask is not None else self.attn(x, **kwargs)
        if attn_mask is not None or kwargs.get("is_causal"):
            raise NotImplementedError("prefix-tuning with an attention mask or causal attention is not supported")
        a = self.attn
        B, N, _ = x.shape
        heads, hd = int(a.num_heads), int(a.head_dim)
        attn_dim = heads * hd
        qkv = a.qkv(x).reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = getattr(a, "q_norm", nn.Identity())(q), getattr(a, "k_norm", nn.Identity())(k)
        pk, pv = split_prefix(prompt.to(x.dtype))
        if pk.shape[-1] != attn_dim:
            raise ValueError(f"prompt dim {pk.shape[-1]} != attention dim {attn_dim} of block {self.layer}")
        pk = pk.reshape(B, -1, heads, hd).transpose(1, 2)
        pv = pv.reshape(B, -1, heads, hd).transpose(1, 2)
        k = torch.cat([pk, k], dim=2)
        v = torch.cat([pv, v], dim=2)
        drop = a.attn_drop.p if (self.training and hasattr(a, "attn_drop")) else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = out.transpose(1, 2).reshape(B, N, attn_dim)
        out = getattr(a, "norm", nn.Identity())(out)
        gate = getattr(a, "gate", None)
        if gate is not None:
            out = out * gate(x).sigmoid()
        out = a.proj(out)
        return getattr(a, "proj_drop", nn.Identity())(out)


class PromptTokensBlock(nn.Module):
    """timm ``Block`` whose input sequence gets the context's prompt tokens after the prefix tokens (prompt-tuning)."""

    def __init__(self, block: nn.Module, layer: int, ctx: PromptContext) -> None:
        super().__init__()
        self.block = block
        self.layer = layer
        self.ctx = ctx

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        prompt = self.ctx.get(self.layer)
        if prompt is not None:
            tokens = prompt.flatten(1, 2).to(x.dtype)
            npt = self.ctx.num_prefix_tokens
            drop = self.ctx.inserted if self.ctx.replace else 0
            x = torch.cat([x[:, :npt], tokens, x[:, npt + drop :]], dim=1)
            self.ctx.inserted = tokens.shape[1] + (0 if self.ctx.replace else self.ctx.inserted)
        return self.block(x, *args, **kwargs)


def attach_prompts(
    backbone: nn.Module, layers: Sequence[int], insertion: str = "prefix", replace: bool = True
) -> PromptContext:
    """Wrap the prompted ``layers`` of ``backbone`` (a :class:`cl.backbones.Backbone` ViT) and return the context.

    :param insertion: ``prefix`` (prefix-tuning of keys/values) or ``tokens`` (prompt-tuning of the sequence).
    :param replace: prompt-tuning only: tokens of a later prompted layer replace the earlier ones (VPT-deep).
    """
    if insertion not in INSERTIONS:
        raise ValueError(f"method.insertion={insertion!r}; allowed: {list(INSERTIONS)}")
    if not getattr(backbone, "is_vit", False):
        name = getattr(backbone, "name", "?")
        raise ValueError(f"prompting needs a ViT backbone; backbone.name={name!r} has no transformer blocks")
    n_blocks = len(backbone.blocks)
    bad = [i for i in layers if not 0 <= int(i) < n_blocks]
    if bad or len(set(layers)) != len(layers):
        raise ValueError(f"prompt layers {list(layers)}: allowed distinct block ids in 0..{n_blocks - 1}")
    model = backbone.model
    npt = int(getattr(model, "num_prefix_tokens", 1))
    ctx = PromptContext(layers, insertion, num_prefix_tokens=npt, replace=replace)
    if insertion == "prefix":
        backbone.wrap_attention(list(layers), lambda i, attn: PrefixAttention(attn, i, ctx))
    else:
        for i in layers:
            backbone.blocks[i] = PromptTokensBlock(backbone.blocks[i], int(i), ctx)
    return ctx
