"""The GDAT multiple-instance model of CoMEL (the reference's ``CDATMIL``): a bag of instance features in, a bag
feature out, with the attention scores that localise instances.

Lee et al., ICCV 2025 (arXiv 2507.02395); reference github Hyun1A/CoMEL @9fd6679,
``continual/modules/cl_modules/cdatmil_owlora.py`` and ``datten.py``:

    h = dropout_0.25(ReLU(Linear_{D->512}(x)))                          instance embedding
    h = h + Attn(LN(h));  h = h + MLP(LN(h))     (x depth 2)            pre-norm blocks, LN eps 1e-6, GELU MLP x4
    a = softmax_i( w^T act(V h_i) )                                     attention-MIL pooling (ABMIL, 256 hidden)
    z = sum_i a_i h_i                                                   bag feature (512) -> the method's classifier

``attention="gdat"`` uses :class:`GroupedDoubleAttention` (O(N * 256)), ``attention="full"`` plain self-attention
(O(N^2)), for the scaling benchmark. Linear layers start Xavier-normal with zero bias, as the reference. Follows the
:class:`cl.backbones.Backbone` contract (``forward(x)`` -> features of size ``num_features``) so that every method runs
on it; :meth:`GDATMIL.forward_mil` also returns the attention and instance features (localisation, BPPL).

``checkpoint_blocks`` recomputes each block's activations in backward (``torch.utils.checkpoint``), at the cost of
one more forward; it only halves the activation memory of 2 blocks, since a block's recomputed activations (~50 x N x
dim floats, the MLP's N x 4 dim ones first) are all alive in its backward. ``chunk_tokens`` (GDAT only) computes
the model in chunks of that many instances, each chunk recomputed in backward: the embedding, each block's agents
(sums of the normalised tokens per intra-region position) and the agents' softmax over all instance keys (merged across
chunks by log-sum-exp), the instances' attention to the agents, projection and MLP, and the pooling scores. The same
function (chunks change the order of floating-point sums and the dropout draws, nothing else); activation memory is a
few N x dim tensors plus one chunk's. Measured in experiments/bench/mil_scaling.py.

Input: a batch of bags ``(B, N, in_dim)``, or packed bags ``(B, n, in_dim + 1)`` (:mod:`cl.data.mil.packing`). Each bag
runs on its own real instances, so a packed bag and the bag itself give the same outputs.

Instance probabilities (:meth:`GDATMIL.instance_probs`) are the attention scores normalised within the bag:
``instance_prob="minmax"`` (default) maps them to [0, 1] by (a - min) / (max - min); the reference divides by max
instead of max - min (``instance_prob="reference"``), which never reaches 1 and depends on min/max; we take that as a
defect and keep it as an option, since the BPPL loss and the localisation metrics depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cl.backbones.gdat_attention import FullSelfAttention, GroupedDoubleAttention, recomputed
from cl.data.mil.packing import unpack_bags

ATTENTIONS = {"gdat": GroupedDoubleAttention, "full": FullSelfAttention}
INSTANCE_PROBS = ("minmax", "reference")
POOL_ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class MILOutput:
    """Per-bag outputs; ``attention`` and ``instances`` are zero on padding rows (``valid`` False)."""

    bag: torch.Tensor  # B, C
    attention: torch.Tensor  # B, N (softmax over each bag's real instances)
    instances: torch.Tensor  # B, N, C
    valid: torch.Tensor  # B, N bool


class Block(nn.Module):
    """Pre-norm transformer block: attention then a GELU MLP, each with a residual connection."""

    def __init__(self, dim: int, num_heads: int, attention: str, mlp_ratio: float, drop: float, **attn_kw) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1, self.norm2 = norm(dim), norm(dim)
        self.attn = ATTENTIONS[attention](dim, num_heads=num_heads, proj_drop=drop, **attn_kw)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim), nn.Dropout(drop)
        )

    def forward(self, x: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
        if not chunk_tokens:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        ka, agent_v, agent_mask = self.attn.chunked_agent_context(x, chunk_tokens, self.norm1)
        chunks = [
            recomputed(self._token_part, x[:, i : i + chunk_tokens], ka, agent_v, agent_mask)
            for i in range(0, x.shape[1], chunk_tokens)
        ]
        return torch.cat(chunks, dim=1)

    def _token_part(self, x: torch.Tensor, ka, agent_v, agent_mask) -> torch.Tensor:
        x = x + self.attn.attend_chunk(self.norm1(x), ka, agent_v, agent_mask)
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """Attention-MIL pooling (Ilse et al. 2018; the reference's ``DAttention``, not gated, no bias)."""

    def __init__(self, dim: int, hidden: int = 256, act: str = "tanh") -> None:
        super().__init__()
        if act not in POOL_ACTS:
            raise ValueError(f"backbone.pool_act={act!r}; allowed: {list(POOL_ACTS)}")
        self.score = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), POOL_ACTS[act](), nn.Linear(hidden, 1, bias=False)
        )

    def forward(self, h: torch.Tensor, chunk_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if chunk_tokens:
            scores = [recomputed(self.score, h[:, i : i + chunk_tokens]) for i in range(0, h.shape[1], chunk_tokens)]
            a = torch.cat(scores, dim=1).squeeze(-1).softmax(dim=-1)
        else:
            a = self.score(h).squeeze(-1).softmax(dim=-1)  # B, N
        return (a.unsqueeze(1) @ h).squeeze(1), a


class GDATMIL(nn.Module):
    """Instance embedding, GDAT (or full attention) blocks and attention-MIL pooling; see the module docstring."""

    is_vit = False
    is_mil = True

    def __init__(
        self,
        in_dim: int = 1024,
        dim: int = 512,
        depth: int = 2,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.25,
        trans_dropout: float = 0.1,
        region_size: int = 16,
        attention: str = "gdat",
        padding: str = "masked",
        pool_act: str = "tanh",
        instance_prob: str = "minmax",
        checkpoint_blocks: bool = False,
        chunk_tokens: int | None = None,
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"backbone.attention={attention!r}; allowed: {list(ATTENTIONS)}")
        if instance_prob not in INSTANCE_PROBS:
            raise ValueError(f"backbone.instance_prob={instance_prob!r}; allowed: {list(INSTANCE_PROBS)}")
        self.name = f"{attention}_mil"
        self.in_dim, self.num_features, self.instance_prob = int(in_dim), int(dim), instance_prob
        if chunk_tokens is not None and (int(chunk_tokens) < 1 or attention != "gdat"):
            raise ValueError(
                f"backbone.chunk_tokens={chunk_tokens} with backbone.attention={attention!r}: chunks need "
                "attention=gdat and chunk_tokens >= 1 (null: no chunks)"
            )
        self.checkpoint_blocks = bool(checkpoint_blocks)
        self.chunk_tokens = int(chunk_tokens) if chunk_tokens else None
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        kw = {"region_size": region_size, "padding": padding} if attention == "gdat" else {}
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, attention, mlp_ratio, trans_dropout, **kw) for _ in range(depth)
        )
        self.pool = AttentionPool(dim, act=pool_act)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _one_bag(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.chunk_tokens:
            c = self.chunk_tokens
            h = torch.cat([recomputed(self.embed, x[:, i : i + c]) for i in range(0, x.shape[1], c)], dim=1)
            for block in self.blocks:
                h = block(h, c)
            z, a = self.pool(h, c)
            return z, a, h
        h = self.embed(x)
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        z, a = self.pool(h)
        return z, a, h

    def forward_mil(self, x: torch.Tensor) -> MILOutput:
        feats, valid = unpack_bags(x, self.in_dim)
        if valid is None:  # bags of equal length without padding run as one batch
            z, a, h = self._one_bag(feats)
            return MILOutput(z, a, h, torch.ones(a.shape, dtype=torch.bool, device=a.device))
        B, N, _ = feats.shape
        zs, a_out = [], feats.new_zeros(B, N)
        h_out = feats.new_zeros(B, N, self.num_features)
        for b in range(B):
            idx = valid[b].nonzero().flatten()
            z, a, h = self._one_bag(feats[b, idx].unsqueeze(0))
            zs.append(z)
            a_out = a_out.index_put((torch.full_like(idx, b), idx), a[0])
            h_out = h_out.index_put((torch.full_like(idx, b), idx), h[0])
        return MILOutput(torch.cat(zs), a_out, h_out, valid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_mil(x).bag

    def instance_probs(self, attention: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per-bag normalised attention (B, N) in [0, 1] (see the module docstring); 0 on padding."""
        big = torch.finfo(attention.dtype).max
        lo = attention.masked_fill(~valid, big).amin(dim=-1, keepdim=True)
        hi = attention.masked_fill(~valid, -big).amax(dim=-1, keepdim=True)
        denom = hi - lo if self.instance_prob == "minmax" else hi
        return ((attention - lo) / (denom + 1e-10)).masked_fill(~valid, 0.0)
