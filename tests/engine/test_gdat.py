"""GDAT (CoMEL's grouped double attention MIL model): agents are group means, the reference's algorithm on the same
weights, packed bags equal plain ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cl.backbones.gdat import GDATMIL
from cl.backbones.gdat_attention import GroupedDoubleAttention, grid_geometry, group_agents
from cl.data.mil.packing import pack_bag


def _agents_by_hand(x: torch.Tensor, region: int, masked: bool) -> torch.Tensor:
    """Loop over tokens: token i sits at grid cell (i // side, i % side); agent = intra-region position."""
    L, C = x.shape
    side, rs = grid_geometry(L, region)
    sums, counts = torch.zeros(rs * rs, C, dtype=torch.float64), torch.zeros(rs * rs, dtype=torch.float64)
    for i in range(L):
        r, c = divmod(i, side)
        p = (r % rs) * rs + (c % rs)
        sums[p] += x[i].double()
        counts[p] += 1
    n_regions = (side // rs) ** 2
    return (sums / counts.clamp(min=1)[:, None]) if masked else sums / n_regions


@pytest.mark.parametrize("L", [5, 30, 300, 700])
@pytest.mark.parametrize("masked", [True, False])
def test_agents_are_group_means(L, masked):
    torch.manual_seed(0)
    x = torch.randn(1, L, 6)
    _, _, agents, rs = group_agents(x, 16, "masked" if masked else "reference")
    side = math.ceil(math.sqrt(L))
    assert rs == (side + side % 2 if L < 10 else 16)
    np.testing.assert_allclose(agents[0].double(), _agents_by_hand(x[0], 16, masked), atol=1e-6)


def test_grid_geometry_matches_the_reference():
    assert grid_geometry(5, 16) == (4, 4)  # < 10 tokens: one region, even side
    assert grid_geometry(256, 16) == (16, 16)  # one region: agents are single tokens
    assert grid_geometry(257, 16) == (32, 16)  # grouping starts above 256 instances


def _reference_cdat(attn: GroupedDoubleAttention, x: torch.Tensor) -> torch.Tensor:
    """Transcription of the reference's CDATAttention.forward (B = 1, zero an/na biases, no dropout)."""
    b, n, c = x.shape
    side, rs = grid_geometry(n, attn.region_size)
    add = side * side - n
    xp = torch.cat([x, torch.zeros(b, add, c)], dim=1).view(b, side, side, c)
    regions = xp.view(b, side // rs, rs, side // rs, rs, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, rs, rs, c)
    xr = regions.view(-1, rs * rs, c).mean(dim=0, keepdim=True)
    xp = xp.reshape(b, side * side, c)
    h, hd = attn.num_heads, c // attn.num_heads
    q, k, v = attn.qkv(xp).reshape(b, -1, 3, c).permute(2, 0, 1, 3)
    qa, ka = attn.qkv(xr).reshape(b, rs * rs, 3, c).permute(2, 0, 1, 3)[:2]

    def heads(t):
        return t.reshape(b, -1, h, hd).permute(0, 2, 1, 3)

    q, k, v, qa, ka = map(heads, (q, k, v, qa, ka))
    agent_v = torch.softmax((qa * attn.scale) @ k.transpose(-2, -1), dim=-1) @ v
    out = torch.softmax((q * attn.scale) @ ka.transpose(-2, -1), dim=-1) @ agent_v
    out = out.transpose(1, 2).reshape(b, -1, c) + 0.1 * v.transpose(1, 2).reshape(b, -1, c)
    return attn.proj(out[:, :n])


@pytest.mark.parametrize("L", [7, 100, 300])
def test_reference_padding_mode_equals_the_reference_algorithm(L):
    torch.manual_seed(1)
    attn = GroupedDoubleAttention(16, num_heads=4, padding="reference").eval()
    x = torch.randn(1, L, 16)
    torch.testing.assert_close(attn(x), _reference_cdat(attn, x), atol=1e-5, rtol=1e-5)


def test_masked_mode_ignores_grid_padding():
    """Masked agents see only real tokens: a bag of 300 equals the same bag with its agents formed by hand."""
    torch.manual_seed(2)
    attn = GroupedDoubleAttention(16, num_heads=4, padding="masked").eval()
    ref = GroupedDoubleAttention(16, num_heads=4, padding="reference").eval()
    ref.load_state_dict(attn.state_dict())
    x = torch.randn(1, 300, 16)
    assert not torch.allclose(attn(x), ref(x), atol=1e-4)  # the padding changes the reference's output
    full = torch.randn(1, 1024, 16)  # a full grid: no padding, both modes agree
    torch.testing.assert_close(attn(full), ref(full), atol=1e-5, rtol=1e-5)


def test_packed_bag_gives_the_bag_outputs():
    torch.manual_seed(3)
    model = GDATMIL(in_dim=12, dim=32, num_heads=4).eval()
    bag = torch.randn(40, 12)
    packed, kept = pack_bag(bag, 64)
    a, b = model.forward_mil(bag[None]), model.forward_mil(packed[None])
    torch.testing.assert_close(a.bag, b.bag, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.attention[0], b.attention[0, :40], atol=1e-6, rtol=1e-5)
    assert b.valid[0].sum() == 40 and torch.all(b.attention[0, 40:] == 0)
    probs = model.instance_probs(b.attention, b.valid)
    assert float(probs[0, :40].max()) == pytest.approx(1.0) and float(probs[0, :40].min()) == pytest.approx(0.0)


def test_reference_instance_prob_divides_by_max():
    model = GDATMIL(in_dim=4, dim=8, num_heads=2, instance_prob="reference")
    a = torch.tensor([[0.1, 0.3, 0.6]])
    torch.testing.assert_close(model.instance_probs(a, torch.ones_like(a, dtype=torch.bool)), (a - 0.1) / (0.6 + 1e-10))


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="backbone.attention"):
        GDATMIL(attention="nope")
    with pytest.raises(ValueError, match="backbone.in_dim"):
        GDATMIL(in_dim=8, dim=16, num_heads=2)(torch.randn(1, 5, 7))


def test_checkpointed_blocks_give_the_same_gradients():
    torch.manual_seed(4)
    a = GDATMIL(in_dim=6, dim=16, num_heads=2, dropout=0.0, trans_dropout=0.0)
    b = GDATMIL(in_dim=6, dim=16, num_heads=2, dropout=0.0, trans_dropout=0.0, checkpoint_blocks=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 50, 6)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


@pytest.mark.parametrize("padding", ["masked", "reference"])
@pytest.mark.parametrize(("B", "L", "chunk"), [(1, 300, 64), (2, 300, 100), (1, 100, 30), (1, 7, 3)])
def test_chunked_tokens_give_the_same_outputs_and_gradients(padding, B, L, chunk):
    torch.manual_seed(5)
    kw = dict(in_dim=6, dim=16, num_heads=2, dropout=0.0, trans_dropout=0.0, padding=padding)
    a, b = GDATMIL(**kw), GDATMIL(**kw, chunk_tokens=chunk)
    b.load_state_dict(a.state_dict())
    # L = 300: grid 32 x 32, 4 regions (agents are real group means, reference padding 724 zero tokens); 100: one
    # region; 7: fewer than 10 tokens (agents = tokens of a 4 x 4 grid)
    x = torch.randn(B, L, 6)
    oa, ob = a.forward_mil(x), b.forward_mil(x)
    torch.testing.assert_close(ob.bag, oa.bag, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ob.attention, oa.attention, atol=1e-6, rtol=1e-4)
    (oa.bag.square().sum() + oa.attention.max()).backward()
    (ob.bag.square().sum() + ob.attention.max()).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), atol=1e-5, rtol=1e-4)


def test_chunked_tokens_needs_gdat():
    with pytest.raises(ValueError, match="backbone.chunk_tokens"):
        GDATMIL(in_dim=6, dim=16, num_heads=2, attention="full", chunk_tokens=64)
    with pytest.raises(ValueError, match="backbone.chunk_tokens"):
        GDATMIL(in_dim=6, dim=16, num_heads=2, chunk_tokens=0)
