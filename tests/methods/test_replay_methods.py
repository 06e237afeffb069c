"""ER / DER++ / k-FPF methods: losses use the buffer, state loads strictly, configs are rejected clearly."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from cl.methods.derpp import DERPP
from cl.methods.er import ER
from cl.methods.k_fpf import KFPF


def _bb():
    from cl.backbones import Backbone

    return Backbone("vit_tiny_patch16_224", in_chans=1, img_size=8, patch_size=4, embed_dim=24, depth=2, num_heads=2)


def _make(cls, **kw):
    torch.manual_seed(0)
    m = cls(_bb(), num_classes=4, optimizer=partial(torch.optim.Adam, lr=1e-3), input_shape=(1, 8, 8), **kw)
    m.seen_classes[:2] = True
    m.current_classes[:2] = True
    return m


@pytest.mark.parametrize("cls", [ER, DERPP, KFPF])
def test_buffer_is_filled_and_state_loads_strictly(cls):
    m = _make(cls, buffer_size=6)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        m.compute_loss(x, y, (x, y))
        if cls is KFPF:
            m._schedule = [10**9] * m.k
        m.on_train_batch_end(None, (x, y), 0)
    assert len(m.buffer) == 6 and int(m.buffer.num_seen) == 12
    if cls is DERPP:
        assert m.buffer.logits.abs().sum() > 0  # logits stored with the items
    fresh = _make(cls, buffer_size=6)
    fresh.load_state_dict(m.state_dict(), strict=True)
    assert torch.equal(fresh.buffer.x, m.buffer.x)


def test_er_loss_includes_replay():
    m = _make(ER, buffer_size=8, replay_batch_size=4)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    seen = []
    m.forward = lambda inp: (seen.append(len(inp)), torch.zeros(len(inp), 4, requires_grad=True))[1]
    m.compute_loss(x, y, (x, y))
    m.buffer.add(x, y, 0)
    m.compute_loss(x, y, (x, y))
    assert seen == [4, 8]  # stream batch alone, then stream + replay in one forward


def test_derpp_terms_switch_with_alpha_beta():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    losses = {}
    for ab in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]:
        m = _make(DERPP, buffer_size=8, alpha=ab[0], beta=ab[1])
        m.buffer.add(x, y, 0, logits=torch.full((4, 4), 5.0))
        torch.manual_seed(1)
        losses[ab] = float(m.compute_loss(x, y, (x, y)).detach())
    assert losses[(1.0, 0.0)] > losses[(0.0, 0.0)] + 1.0  # MSE to logits of 5 is large
    assert losses[(0.0, 1.0)] > losses[(0.0, 0.0)]


def test_bad_configs_name_the_key():
    with pytest.raises(ValueError, match="replay_batch_size"):
        _make(ER, replay_batch_size=0)
    with pytest.raises(ValueError, match="method.alpha"):
        _make(DERPP, alpha=-1.0)
    with pytest.raises(ValueError, match="method.k"):
        _make(KFPF, k=0)
    with pytest.raises(ValueError, match="auto"):
        _make(KFPF, modules="auto")


def test_er_replays_only_the_items_the_buffer_holds():
    """With 3 items stored and replay_batch_size=6, the replay batch is those 3 items once each (Mammoth shrinks the
    request), not 6 draws with repeats."""
    m = _make(ER, buffer_size=8, replay_batch_size=6)
    stored = torch.randn(3, 1, 8, 8)
    m.buffer.add(stored, torch.tensor([0, 1, 0]), 0)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    seen = []
    m.forward = lambda inp: (seen.append(inp), torch.zeros(len(inp), 4, requires_grad=True))[1]
    m.compute_loss(x, y, (x, y))
    replayed = seen[0][4:]
    assert len(replayed) == 3
    assert sorted(float(r.sum()) for r in replayed) == sorted(float(s.sum()) for s in stored)


def test_derpp_stores_each_items_logits_of_its_own_step_before_the_update():
    """DER++ (Mammoth's der/derpp: ``buffer.add_data(..., logits=outputs.data)``) stores, for each stream item, the
    unmasked logits the model gave that item in the forward pass of the step that offered it, i.e. before that
    step's optimizer update. Post-update logits, masked logits or rows of other items would fail here."""
    m = _make(DERPP, buffer_size=16, replay_batch_size=4, alpha=0.3, beta=0.5)
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    expected = []
    for step in range(3):  # 12 items into a 16-slot buffer: item k lands in slot k
        x, y = torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 0, 1])
        with torch.no_grad():
            before = m(x).clone()
        loss = m.compute_loss(x, y, (x, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_train_batch_end(None, (x, y), step)
        with torch.no_grad():
            assert (m(x) - before).abs().max() > 1e-3  # the update moved this batch's logits
        expected.append(before)
    expected = torch.cat(expected)
    assert len(m.buffer) == 12
    assert torch.allclose(m.buffer.logits[:12], expected, atol=1e-5)
    assert bool((m.buffer.logits[:12, 2:] > -1e3).all())  # classes not yet seen are stored unmasked
