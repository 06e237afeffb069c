"""Grouped double attention (GDAT) of CoMEL and the full self-attention it replaces.

Lee et al., "Continual Multiple Instance Learning with Enhanced Localization for Histopathological Whole Slide Image
Analysis", ICCV 2025 (arXiv 2507.02395); reference code github Hyun1A/CoMEL @9fd6679,
``continual/modules/cl_modules/cdatmil_owlora.py`` (``CDATAttention``).

For a bag of L instance tokens X (L x C): pad X into an H x H grid, H = ceil(sqrt L) rounded up to a multiple of the
region size s (16), cut the grid into (H/s)^2 regions of s x s and form A = s^2 group ("agent") tokens, agent p the
mean of the tokens at intra-region position p over all regions. With q, k, v = qkv(X) and q_A, k_A = qkv(A) per head:

    V_A = softmax(q_A k^T / sqrt(d)) v                  (agents attend over all instances)
    out = softmax(q k_A^T / sqrt(d)) V_A + 0.1 v        (instances attend over the agents)

then the output projection: O(L * A) time and memory instead of O(L^2). Bags of fewer than 10 instances use one region
of the even-rounded grid (agents = tokens), as the reference.

Read against the reference (decisions, see also the issue's list):

* ``padding="masked"`` (default): the zero tokens that fill the grid are excluded from the agent means (each agent
  averages its real tokens only), are not keys of the agents' softmax, and agents that hold no real token are not keys
  of the instances' softmax. The reference (``padding="reference"``) averages the zeros into the agents and lets the
  agents attend to the padding (whose key is the qkv bias), so a bag's output depends on how much padding its size
  needs; we take that as a defect and keep it as an option.
* The reference's learnable scalar biases ``an_bias``/``na_bias`` are constant along the softmax axis, so they cancel
  in the softmax and have no effect on any output or gradient: not built. ``v_proj`` and ``pool`` are built but unused
  in the reference's forward: not built (their LoRA adapters in the reference only ever receive the orthogonality
  penalty's gradient).
* Bags of 10-256 instances are one 16 x 16 region, so each agent is a single token (grouping starts above 256
  instances): that is the method (the grid geometry), kept.
* The reference averages the regions over the batch dimension too (it assumes one bag per batch); here each bag has
  its own agents.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

PADDING_MODES = ("masked", "reference")
MIN_REGION_TOKENS = 10  # the reference's min_region_num: smaller bags are one region of the whole grid


def grid_geometry(n_tokens: int, region_size: int) -> tuple[int, int]:
    """``(side H of the padded square grid, region size)`` for ``n_tokens`` tokens, as the reference computes them."""
    side = math.ceil(math.sqrt(n_tokens))
    if n_tokens < MIN_REGION_TOKENS:
        side += side % 2
        return side, side
    side += -side % region_size
    return side, region_size


def group_agents(
    x: torch.Tensor, region_size: int, padding: str = "masked"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Pad ``x`` (B, L, C) into the grid and form the agents.

    :return: ``(x_grid (B, H*H, C), grid_valid (B, H*H) bool, agents (B, s*s, C), region_size s)``; with
        ``padding="masked"`` an agent is the mean of its real tokens (zero if it has none), with ``"reference"`` the
        mean over all regions, padding zeros included.
    """
    B, L, C = x.shape
    side, rs = grid_geometry(L, region_size)
    pad = side * side - L
    x_grid = F.pad(x, (0, 0, 0, pad))
    valid = torch.arange(side * side, device=x.device).expand(B, -1) < L
    regions = x_grid.view(B, side // rs, rs, side // rs, rs, C).permute(0, 1, 3, 2, 4, 5).reshape(B, -1, rs * rs, C)
    if padding == "reference":
        return x_grid, valid, regions.mean(dim=1), rs
    v = valid.view(B, side // rs, rs, side // rs, rs).permute(0, 1, 3, 2, 4).reshape(B, -1, rs * rs, 1).to(x.dtype)
    agents = (regions * v).sum(dim=1) / v.sum(dim=1).clamp(min=1.0)
    return x_grid, valid, agents, rs


def recomputed(fn: Callable, *args):
    """``fn(*args)``, its activations recomputed in backward (``torch.utils.checkpoint``) when autograd records."""
    return checkpoint(fn, *args, use_reentrant=False) if torch.is_grad_enabled() else fn(*args)


def agent_index(n_tokens: int, region_size: int, device: torch.device | None = None) -> tuple[torch.Tensor, int, int]:
    """``(agent of each of the first n_tokens grid tokens (n_tokens,), grid side H, region size s)``: token t sits at
    grid cell (t // H, t % H) and belongs to agent (row % s) * s + col % s, the intra-region position of
    :func:`group_agents`."""
    side, rs = grid_geometry(n_tokens, region_size)
    t = torch.arange(n_tokens, device=device)
    return (t // side % rs) * rs + t % side % rs, side, rs


def agent_valid(grid_valid: torch.Tensor, side: int, rs: int) -> torch.Tensor:
    """(B, s*s) bool: the agents that hold at least one real token."""
    B = grid_valid.shape[0]
    v = grid_valid.view(B, side // rs, rs, side // rs, rs).permute(0, 1, 3, 2, 4).reshape(B, -1, rs * rs)
    return v.any(dim=1)


class GroupedDoubleAttention(nn.Module):
    """GDAT attention (the reference's ``CDATAttention``); see the module docstring."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        region_size: int = 16,
        padding: str = "masked",
        value_residual: float = 0.1,
    ) -> None:
        super().__init__()
        if padding not in PADDING_MODES:
            raise ValueError(f"backbone.padding={padding!r}; allowed: {list(PADDING_MODES)}")
        if dim % num_heads:
            raise ValueError(f"backbone.dim={dim} is not divisible by backbone.num_heads={num_heads}")
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.region_size, self.padding, self.value_residual = region_size, padding, value_residual
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, n, C = t.shape
        return t.view(B, n, self.num_heads, C // self.num_heads).transpose(1, 2)

    def agent_context(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The pass over the whole bag: ``(q, v, k_A, V_A, agent_mask)`` for the grid tokens of ``x`` (B, L, C);
        ``q`` and ``v`` are (B, heads, H*H, d), ``k_A`` and ``V_A`` (B, heads, s*s, d), ``agent_mask`` None or bool."""
        x_grid, valid, agents, rs = group_agents(x, self.region_size, self.padding)
        side = int(math.isqrt(x_grid.shape[1]))
        q, k, v = (self._heads(t) for t in self.qkv(x_grid).chunk(3, dim=-1))
        qa, ka, _ = (self._heads(t) for t in self.qkv(agents).chunk(3, dim=-1))
        key_mask = agent_mask = None
        if self.padding == "masked":
            key_mask = valid[:, None, None, :]
            agent_mask = agent_valid(valid, side, rs)[:, None, None, :]
        # softmax(q k^T / sqrt(d)) v through the fused kernel: the (A x H*H) and (H*H x A) attention maps are not kept
        # for backward, so activation memory stays O(N * C) (the maps alone are 0.8 GB each at N = 1e5, 8 heads)
        agent_v = F.scaled_dot_product_attention(qa, k, v, attn_mask=key_mask, scale=self.scale)
        return q, v, ka, agent_v, agent_mask

    def instances_attend(
        self, q: torch.Tensor, v: torch.Tensor, ka: torch.Tensor, agent_v: torch.Tensor, agent_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Instance queries over the agents plus the value residual, then the projection: (B, n, C) for the n tokens
        of ``q``/``v`` (B, heads, n, d). Each instance's output depends on the bag only through ``ka``/``agent_v``."""
        out = F.scaled_dot_product_attention(q, ka, agent_v, attn_mask=agent_mask, scale=self.scale)
        out = out + self.value_residual * v
        B, _, n, _ = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, n, -1)))

    def attend_chunk(
        self, x: torch.Tensor, ka: torch.Tensor, agent_v: torch.Tensor, agent_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The output for a chunk ``x`` (B, n, C) of the bag's tokens, given the whole bag's agent keys and values."""
        q, _, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        return self.instances_attend(q, v, ka, agent_v, agent_mask)

    def chunked_agent_context(
        self, x: torch.Tensor, chunk: int, pre: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(k_A, V_A, agent_mask)`` of :meth:`agent_context` for the tokens ``pre(x)``, computed in chunks of
        ``chunk`` tokens, each recomputed in backward: the agents are sums of ``pre(x)`` per intra-region position,
        and the agents' softmax over all keys is merged across chunks (log-sum-exp). The grid padding is never built:
        ``padding="reference"`` adds its zero tokens (keys and values of qkv(0)) and divides the sums by the number of
        regions, ``"masked"`` divides by the real tokens per agent and masks the empty agents, as :func:`group_agents`.
        """
        B, L, C = x.shape
        idx, side, rs = agent_index(L, self.region_size, x.device)
        n_agents = rs * rs
        spans = [(i, min(i + chunk, L)) for i in range(0, L, chunk)]
        sums = sum(recomputed(self._agent_sums, pre, x[:, i:j], idx[i:j], n_agents) for i, j in spans)
        counts = torch.bincount(idx, minlength=n_agents).to(x.dtype)
        agent_mask = None
        if self.padding == "masked":
            agents = sums / counts.clamp(min=1.0)[:, None]
            agent_mask = (counts > 0).expand(B, -1)[:, None, None, :]
        else:
            agents = sums / (side // rs) ** 2
        qa, ka, _ = (self._heads(t) for t in self.qkv(agents).chunk(3, dim=-1))
        parts = [recomputed(self._agent_partial, pre, x[:, i:j], qa) for i, j in spans]
        if self.padding == "reference" and side * side > L:
            parts.append(recomputed(self._agent_partial, None, x.new_zeros(B, side * side - L, C), qa))
        top = torch.stack([m for m, _, _ in parts]).amax(dim=0)
        num = sum(torch.exp(m - top) * o for m, _, o in parts)
        den = sum(torch.exp(m - top) * z for m, z, _ in parts)
        return ka, num / den, agent_mask

    @staticmethod
    def _agent_sums(pre: Callable, x: torch.Tensor, idx: torch.Tensor, n_agents: int) -> torch.Tensor:
        y = pre(x)
        return y.new_zeros(y.shape[0], n_agents, y.shape[2]).index_add(1, idx, y)

    def _agent_partial(self, pre: Callable | None, x: torch.Tensor, qa: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(max, sum of exp, exp-weighted values) of the agents' attention logits over the chunk's keys."""
        _, k, v = (self._heads(t) for t in self.qkv(x if pre is None else pre(x)).chunk(3, dim=-1))
        logits = (qa * self.scale) @ k.transpose(-2, -1)  # B, heads, agents, chunk
        m = logits.amax(dim=-1, keepdim=True).detach()
        p = torch.exp(logits - m)
        return m, p.sum(dim=-1, keepdim=True), p @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        q, v, ka, agent_v, agent_mask = self.agent_context(x)
        return self.instances_attend(q[:, :, :L], v[:, :, :L], ka, agent_v, agent_mask)


class FullSelfAttention(nn.Module):
    """Multi-head self-attention over all L tokens, softmax(q k^T / sqrt(d)) v materialised (O(L^2) memory), as a
    TransMIL-like transformer MIL computes it; the baseline of ``experiments/bench/mil_scaling.py``."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_drop: float = 0.0, **_: object):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = (t.view(B, L, self.num_heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        out = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))
