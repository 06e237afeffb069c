"""Equations of cl.modules.prompts / prompt_coda / prompt_select on small hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cl.backbones import Backbone
from cl.modules.prompt_coda import CodaPool, gram_schmidt, ortho_penalty
from cl.modules.prompt_schedule import coda_cosine_factor
from cl.modules.prompt_select import KeyedPromptPool
from cl.modules.prompts import attach_prompts, split_prefix

TINY = dict(name="vit_tiny_patch16_224", in_chans=1, img_size=8, patch_size=4, embed_dim=12, depth=2, num_heads=2)


def _vit() -> Backbone:
    torch.manual_seed(0)
    return Backbone(**TINY).eval()


def test_alpha_is_cosine_of_query_times_attention_with_keys():
    q = torch.tensor([[1.0, 2.0]])
    A = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    K = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    alpha = CodaPool.weights(q, K, A)
    # q*A_0 = (1, 2) vs K_0 = (1, 0): 1/sqrt(5); q*A_1 = (0, 2) vs K_1 = (1, 1): 2/(2 sqrt(2))
    assert torch.allclose(alpha, torch.tensor([[1 / math.sqrt(5), 1 / math.sqrt(2)]]))


def test_weighted_prompt_is_alpha_weighted_sum_of_components():
    pool = CodaPool([0], pool_size=2, length=2, dim=2, key_dim=2, ortho_weight=0.0)
    pool.set_num_tasks(1)
    with torch.no_grad():
        pool.K["0"].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        pool.A["0"].copy_(torch.ones(2, 2))
        pool.P["0"].copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [3.0, 3.0]]]))
    q = torch.tensor([[3.0, 4.0]])  # alpha = (3/5, 4/5)
    prompts, loss = pool(q, train=False)
    expected = 0.6 * pool.P["0"][0] + 0.8 * pool.P["0"][1]
    assert prompts[0].shape == (1, 1, 2, 2)
    assert torch.allclose(prompts[0][0, 0], expected)
    assert float(loss) == 0.0


def test_prefix_split_gives_first_half_to_keys_and_second_half_to_values():
    p = torch.arange(2 * 2 * 4 * 3, dtype=torch.float32).reshape(2, 2, 4, 3)  # B=2, n=2 prompts, L=4, D=3
    pk, pv = split_prefix(p)
    assert pk.shape == pv.shape == (2, 4, 3)
    assert torch.equal(pk[:, :2], p[:, 0, :2]) and torch.equal(pk[:, 2:], p[:, 1, :2])
    assert torch.equal(pv[:, :2], p[:, 0, 2:]) and torch.equal(pv[:, 2:], p[:, 1, 2:])
    with pytest.raises(ValueError, match="even length"):
        split_prefix(p[:, :, :3])


def test_prefix_attention_prepends_to_keys_and_values_only():
    vit = _vit()
    attn = vit.blocks[0].attn
    ctx = attach_prompts(vit, [0], "prefix")
    torch.manual_seed(1)
    x = torch.randn(2, 5, 12)
    prompt = torch.randn(2, 1, 4, 12)
    with ctx.use({0: prompt}):
        out = vit.blocks[0].attn(x)
    # by hand: q from x; keys/values = [p_k ; k(x)], [p_v ; v(x)] per head
    H, hd = 2, 6
    q, k, v = attn.qkv(x).reshape(2, 5, 3, H, hd).permute(2, 0, 3, 1, 4)
    pk, pv = (
        prompt[:, 0, :2].reshape(2, 2, H, hd).transpose(1, 2),
        prompt[:, 0, 2:].reshape(2, 2, H, hd).transpose(1, 2),
    )
    kk, vv = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
    w = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    ref = attn.proj((w @ vv).transpose(1, 2).reshape(2, 5, 12))
    assert out.shape == x.shape  # queries unchanged: same token count
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, attn(x), atol=1e-3)


@pytest.mark.parametrize("insertion", ["prefix", "tokens"])
def test_zero_length_prompt_or_no_layers_reproduces_the_frozen_backbone(insertion):
    x = torch.randn(3, 1, 8, 8)
    ref = _vit()(x)
    vit = _vit()
    ctx = attach_prompts(vit, [0, 1], insertion)
    with ctx.use({0: torch.zeros(3, 1, 0, 12), 1: torch.zeros(3, 1, 0, 12)}):
        assert torch.equal(vit(x), ref)
    assert torch.equal(vit(x), ref)  # no prompt in the context
    empty = _vit()
    ctx = attach_prompts(empty, [], insertion)
    with ctx.use({}):
        assert torch.equal(empty(x), ref)


def test_prompt_tuning_inserts_tokens_after_cls_and_replaces_them_deeper():
    vit = _vit()
    ctx = attach_prompts(vit, [0, 1], "tokens", replace=True)
    x = torch.randn(2, 1, 8, 8)
    seen = []
    vit.blocks[1].block.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    with ctx.use({0: torch.randn(2, 1, 3, 12), 1: torch.randn(2, 1, 2, 12)}):
        tokens = vit.tokens(x)
    assert seen == [1 + 2 + 4]  # CLS + 2 new prompt tokens (the 3 of block 0 replaced) + 4 patches
    assert tokens.shape[1] == 7


def test_past_components_are_detached_and_future_ones_unused():
    pool = CodaPool([0], pool_size=6, length=2, dim=4, key_dim=6, ortho_weight=0.1)
    pool.set_num_tasks(3)
    pool.start_task(0)
    pool.start_task(1)  # owns [2, 4)
    prompts, ortho = pool(torch.randn(5, 6), train=True)
    (prompts[0].square().sum() + ortho).backward()
    for g in (pool.K["0"].grad, pool.A["0"].grad, pool.P["0"].grad):
        assert torch.all(g[:2] == 0)  # past: detached
        assert torch.all(g[4:] == 0)  # future: not used
        assert g[2:4].abs().sum() > 0  # current: trained


def test_gram_schmidt_new_components_orthonormal_to_trained_old_ones():
    torch.manual_seed(0)
    old = torch.randn(3, 8)  # "trained" past components: not orthogonal to each other
    new = gram_schmidt(torch.cat([old, torch.rand(5, 8)]), s=3, f=6)
    assert torch.equal(new[:3], old)
    assert torch.all(new[6:] == 0)
    assert torch.allclose(new[3:6] @ old.T, torch.zeros(3, 3), atol=1e-5)
    assert torch.allclose(new[3:6] @ new[3:6].T, torch.eye(3), atol=1e-5)
    with pytest.raises(ValueError, match="orthogonal"):
        gram_schmidt(torch.randn(10, 4), s=0, f=5)


def test_pool_start_task_orthogonalises_keys_attention_and_flattened_prompts():
    torch.manual_seed(0)
    pool = CodaPool([0, 1], pool_size=4, length=2, dim=3, key_dim=5, ortho_weight=0.0)
    pool.set_num_tasks(2)
    pool.start_task(0)
    with torch.no_grad():
        pool.K["1"][:2] += 0.3  # training moved the past components
    pool.start_task(1)
    for t in (pool.K["1"], pool.A["1"], pool.P["1"].reshape(4, -1)):
        assert torch.allclose(t[2:] @ t[:2].T, torch.zeros(2, 2), atol=1e-5)


def test_ortho_penalty_is_mean_squared_deviation_from_identity():
    assert float(ortho_penalty(torch.eye(3))) == 0.0
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # t t^T - I = [[1, 1], [1, 0]]
    assert float(ortho_penalty(t)) == pytest.approx(3 / 4)


def test_pool_size_must_divide_the_number_of_experiences():
    pool = CodaPool([0], pool_size=10, length=2, dim=6, key_dim=12, ortho_weight=0.0)
    with pytest.raises(ValueError, match=r"method.pool_size=10 .* scenario.n_experiences=3.*\[1, 2, 5, 10\]"):
        pool.set_num_tasks(3)


def test_keyed_pool_top_k_selection_and_per_sample_pull_loss():
    pool = KeyedPromptPool([0], pool_size=3, length=2, dim=2, key_dim=2, top_k=1)
    with torch.no_grad():
        pool.keys["0"].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    q = torch.tensor([[2.0, 0.1], [0.1, 3.0]])  # best keys: 0 for the first sample, 1 for the second
    prompts, loss, chosen = pool(q)
    assert chosen[0].flatten().tolist() == [0, 1]
    gamma = F.normalize(q, dim=1) @ F.normalize(pool.keys["0"], dim=1).T
    assert float(loss) == pytest.approx(float((1 - gamma[0, 0]) + (1 - gamma[1, 1])), rel=1e-6)
    assert torch.equal(prompts[0][1, 0], pool.prompts["0"][1])
    _, _, forced = pool(q, task=2)  # DualPrompt training: the task's prompt for every sample
    assert forced[0].flatten().tolist() == [2, 2]


def test_reference_cosine_schedule():
    assert coda_cosine_factor(0, 20) == 1.0
    assert coda_cosine_factor(19, 20) == pytest.approx(math.cos(0.495 * math.pi))
    assert coda_cosine_factor(10, 20) < coda_cosine_factor(5, 20) < 1.0
    assert coda_cosine_factor(0, 1) == 1.0
