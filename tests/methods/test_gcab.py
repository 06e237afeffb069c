"""GCAB-CFDC on hand-built tiny cases: gate binarisation, HAT's reserved weights, the compensated embedding gradient,
the mask regulariser, CFDC's cascade order and drift loss, freezing, and the state dict."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from torch import nn

from cl.modules import hat
from cl.modules.drift_projector import cascade
from tests.methods.gcab_helpers import DIM, fit, tiny_gcab, tiny_stream


def test_old_gates_are_binarised_and_the_newest_stays_soft():
    s = tiny_stream()
    m = tiny_gcab(s)
    e = torch.tensor([-2.0, 0.0, 0.01, 3.0] + [1.0] * (DIM - 4))
    with torch.no_grad():
        m.e0[0].copy_(e)
    for scale in (1 / 800, 1.0, 800.0):
        m0, _ = m.gates(scale, 2, binarise_old=True)
        assert m0[0, :4].tolist() == [0.0, 0.0, 1.0, 1.0]  # 1[sigmoid(s e) > 0.5]: e = 0 gives exactly 0.5 -> 0
        assert torch.allclose(m0[1], torch.sigmoid(scale * m.e0[1]))  # the newest token: soft
    m0, _ = m.gates(800.0, 2, binarise_old=False)
    assert torch.allclose(m0[0], torch.sigmoid(800.0 * e))
    # after an experience the union of reserved units grows by its binarised gates at s = smax
    m.on_experience_start(s.experiences[0])
    m.on_experience_end(s.experiences[0], None)
    assert m.m0_pre[:4].tolist() == [0.0, 0.0, 1.0, 1.0]
    with torch.no_grad():
        m.e0[1].copy_(-e)
    m.on_experience_start(s.experiences[1])
    m.on_experience_end(s.experiences[1], None)
    assert m.m0_pre[:4].tolist() == [1.0, 0.0, 1.0, 1.0]


def test_anneal_s_runs_from_one_over_smax_and_never_reaches_smax():
    assert hat.anneal_s(0, 10, 800.0) == pytest.approx(1 / 800)
    assert hat.anneal_s(9, 10, 800.0) == pytest.approx(1 / 800 + (800 - 1 / 800) * 0.9)
    assert hat.anneal_s(5, 10, 800.0) < 800.0


@pytest.mark.parametrize(
    ("s", "e"), [(1.0, 0.3), (0.5, -2.0), (50.0, 0.1), (400.0, 0.03), (800.0, 0.015), (800.0, -0.04), (800.0, 0.07)]
)
def test_embedding_gradient_compensation_equals_hats_formula(s, e):
    """grad_e = d sigmoid(s e)/de * smax/s * (cosh(clamp(s e, +-50)) + 1) / (cosh(e) + 1), computed in 50 digits;
    s*|e| = 12, 32 and 56 are where float32 autograd of sigmoid has lost the gradient (the reference's route)."""
    smax, c = 800.0, 50.0
    ee = torch.tensor([e], requires_grad=True)
    (3.0 * hat.gate(ee, s, smax, c)).sum().backward()
    mpmath.mp.dps = 50
    u = mpmath.mpf(s) * mpmath.mpf(e)
    dsig = mpmath.mpf(s) * mpmath.exp(-u) / (1 + mpmath.exp(-u)) ** 2
    clamped = max(min(u, mpmath.mpf(c)), -mpmath.mpf(c))
    want = 3 * dsig * smax / mpmath.mpf(s) * (mpmath.cosh(clamped) + 1) / (mpmath.cosh(mpmath.mpf(e)) + 1)
    assert float(ee.grad) == pytest.approx(float(want), rel=1e-5, abs=1e-30)


def test_embedding_gradient_in_float64_equals_the_reference_route():
    """Where the literal route is accurate (float64, s|e| < 10), the method's e-gradient equals autograd's gradient
    times the compensation factor (the reference's scaler.py)."""
    e = torch.linspace(-5, 5, 11, dtype=torch.float64)
    for s in (0.01, 1.0, 2.0):
        a = e.clone().requires_grad_(True)
        torch.sigmoid(s * a).pow(2).sum().backward()
        factor = 800.0 / s * (torch.cosh(torch.clamp(s * e, -50, 50)) + 1) / (torch.cosh(e) + 1)
        b = e.clone().requires_grad_(True)
        hat.gate(b, s, 800.0, 50.0).pow(2).sum().backward()
        torch.testing.assert_close(b.grad, a.grad * factor, rtol=1e-10, atol=0)


def test_mask_regulariser_by_hand():
    m0, m2 = torch.tensor([0.5, 1.0, 0.25]), torch.tensor([1.0, 0.0])
    assert float(hat.mask_regulariser([m0, m2], None)) == pytest.approx(2.75 / 5)
    p0, p2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(hat.mask_regulariser([m0, m2], [p0, p2])) == pytest.approx((1.0 + 0.25 + 1.0) / 3)
    full = [torch.ones(3), torch.ones(2)]
    assert float(hat.mask_regulariser([m0, m2], full)) == 0.0  # the reference divides by zero here


def test_reserved_block_weights_are_bit_identical_after_a_later_experience():
    """Hand-set gates reserve some units after experience 0; training experience 1 (AdamW with weight decay) leaves
    every block weight at a reserved (output, input) pair bit-identical, and moves the others."""
    s = tiny_stream()
    m = tiny_gcab(s)
    fit(m, s.experiences[0])
    with torch.no_grad():  # reserve m0 units 0..5 and m2 units 0..23 of 48
        m.e0[0].copy_(torch.where(torch.arange(DIM) < 6, 1.0, -1.0))
        m.e2[0].copy_(torch.where(torch.arange(m.block.hidden) < 24, 1.0, -1.0))
    m.m0_pre.zero_()
    m.m2_pre.zero_()
    m.on_experience_end(s.experiences[0], None)  # the union from the hand-set gates
    before = [p.detach().clone() for p, _, _ in m.block.gated_parameters()]
    pre = {"m0": m.m0_pre.clone(), "m2": m.m2_pre.clone()}
    fit(m, s.experiences[1], steps=4)
    moved = 0
    for (p, out, inp), old in zip(m.block.gated_parameters(), before, strict=True):
        reserved = hat.reserved_pairs(pre[out], None if inp is None else pre[inp])
        assert reserved.any()
        assert torch.equal(p.detach()[reserved], old[reserved])
        moved += int((p.detach()[~reserved] != old[~reserved]).sum())
    assert moved > 0


def test_gradient_mask_zeroes_reserved_pairs_and_keeps_the_rest():
    s = tiny_stream()
    m = tiny_gcab(s)
    m.m0_pre.copy_((torch.arange(DIM) % 3 == 0).float())
    m.m2_pre.copy_((torch.arange(m.block.hidden) % 2 == 0).float())
    m.on_experience_start(s.experiences[1])
    x, y = s.experiences[1].train.tensors
    m.compute_loss(x[:4], y[:4], None).backward()
    raw = {id(p): p.grad.clone() for p, _, _ in m.block.gated_parameters()}
    m.on_after_backward()
    for p, out, inp in m.block.gated_parameters():
        po = m.m0_pre if out == "m0" else m.m2_pre
        keep = 1 - (po if inp is None else po[:, None] * (m.m0_pre if inp == "m0" else m.m2_pre)[None, :])
        assert torch.equal(p.grad, raw[id(p)] * keep)


def test_cascade_applies_the_projectors_newest_first():
    """Token c of T=4 sees P_c(P_{c+1}(P_2(F))): with affine maps that do not commute the order is visible."""

    class Affine(nn.Module):
        def __init__(self, a: float, b: float) -> None:
            super().__init__()
            self.a, self.b = a, b

        def forward(self, x):
            return self.a * x + self.b

    ps = nn.ModuleList([Affine(2.0, 1.0), Affine(3.0, -1.0), Affine(-1.0, 5.0)])
    f = torch.tensor([1.0])
    out = cascade(f, ps, 4)
    p0, p1, p2 = (lambda x: 2 * x + 1), (lambda x: 3 * x - 1), (lambda x: -x + 5)
    assert [float(o) for o in out] == [p0(p1(p2(1.0))), p1(p2(1.0)), p2(1.0), 1.0]
    assert [float(o) for o in cascade(f, ps, 2)] == [p0(1.0), 1.0]


def test_evaluation_feeds_each_old_token_its_cascade_and_training_does_not():
    s = tiny_stream()
    m = tiny_gcab(s).eval()
    m.on_experience_start(s.experiences[2])
    seen = []
    hook = m.block.register_forward_pre_hook(lambda mod, args: seen.append(args[1]))
    x = s.experiences[0].test.tensors[0][:3]
    m(x)
    feats = m.backbone.block_tokens(x)
    assert seen[-1].shape == (3, 3, 4, DIM)
    torch.testing.assert_close(seen[-1][2], feats)
    torch.testing.assert_close(seen[-1][1], m.projectors[1](feats))
    torch.testing.assert_close(seen[-1][0], m.projectors[0](m.projectors[1](feats)))
    m.train()
    m.compute_loss(x, torch.tensor([0, 1, 4]), None)
    assert seen[-1].shape == (3, 4, DIM)  # training: every token sees the raw features
    hook.remove()


@pytest.mark.parametrize("pfr_loss", ["norm", "mse"])
def test_drift_loss_by_hand(pfr_loss):
    s = tiny_stream()
    m = tiny_gcab(s, pfr_loss=pfr_loss, lambda_pfr=0.5)
    m.on_experience_start(s.experiences[0])
    m.on_experience_end(s.experiences[0], None)
    teacher_weights = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    with torch.no_grad():
        m.backbone.model.patch_embed.proj.weight.add_(0.1)  # the student drifts
    m.on_experience_start(s.experiences[1])  # the teacher is the trunk as it is now
    with torch.no_grad():
        m.backbone.model.patch_embed.proj.weight.add_(0.1)
    x = s.experiences[1].train.tensors[0][:5]
    m.eval()
    feats = m.backbone.block_tokens(x)
    got = m.drift_loss(x, feats)
    m.backbone.load_state_dict(teacher_weights)
    m.backbone.model.patch_embed.proj.weight.data.add_(0.1)
    target = m.backbone.block_tokens(x)
    diff = target - m.projectors[0](feats)
    want = 0.5 * (diff.pow(2).sum().sqrt() if pfr_loss == "norm" else diff.pow(2).mean())
    torch.testing.assert_close(got, want)


def test_freezing_from_the_second_experience():
    s = tiny_stream()
    m = tiny_gcab(s)
    m.on_experience_start(s.experiences[0])
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "block.norm1.weight" in names and "heads.0.0.weight" in names and "task_tokens.0" in names
    assert "task_tokens.1" not in names and "e0.1" not in names and not any(n.startswith("projectors.") for n in names)
    assert "backbone.model.norm.weight" not in names  # unused by the trunk features: frozen
    m.on_experience_start(s.experiences[1])
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"task_tokens.1", "e0.1", "e2.1", "heads.1.1.weight", "block.attn.q.weight"} <= names
    assert {"projectors.0.fc1.weight", "backbone.model.patch_embed.proj.weight"} <= names
    frozen = {"task_tokens.0", "e0.0", "heads.0.1.weight", "heads.1.0.weight", "block.norm1.weight"}
    frozen |= {"backbone.model.blocks.0.norm1.weight", "projectors.1.fc1.weight"}
    assert not frozen & names
    assert not any(n.startswith("old") for n in names)


def test_bce_loss_uses_the_seen_classes_with_one_hot_targets():
    s = tiny_stream()
    m = tiny_gcab(s, lambda_gcab=0.0, cfdc=False)
    m.on_experience_start(s.experiences[0])
    m.on_experience_start(s.experiences[1])
    x, y = s.experiences[1].train.tensors[0][:4], torch.tensor([2, 3, 2, 3])
    m._s = 3.0
    logits = m.gcab_forward(x, 3.0, project=False)[0][:, :4]
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.eye(4)[y])
    torch.testing.assert_close(m.compute_loss(x, y, None), want)


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="method.loss"):
        tiny_gcab(loss="mse")
    with pytest.raises(ValueError, match="method.pfr_loss"):
        tiny_gcab(pfr_loss="l1")
    with pytest.raises(ValueError, match="method.projector_norm"):
        tiny_gcab(projector_norm="batch")
    allowed = r"method.kernel_backend='cuda'; allowed: \['auto', 'reference', 'torch', 'triton'\]"
    with pytest.raises(ValueError, match=allowed):
        tiny_gcab(kernel_backend="cuda")


def test_warmup_cosine_schedule_by_hand():
    from cl.modules.warmup_cosine import warmup_cosine

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = warmup_cosine(opt, epochs=10, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-6) and lrs[1] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 5)
    assert lrs[5] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 5 / 10)))


def test_gcab_on_the_reference_convit_trunk_trains_a_step():
    """backbone=convit_gcab at 32x32: 5 GPSA blocks of width 384, 12 heads, 64 tokens; the unused final norm and
    class token are frozen; one step moves the trunk and the block."""
    from functools import partial

    from cl.backbones import Backbone
    from cl.methods.gcab import GCAB

    torch.manual_seed(0)
    kw = dict(embed_dim=32, num_heads=12, depth=5, local_up_to_layer=5, patch_size=4, drop_path_rate=0.08)
    b = Backbone("convit_tiny", in_chans=3, img_size=32, **kw)
    s = tiny_stream()
    m = GCAB(b, s.num_classes, partial(torch.optim.AdamW, lr=1e-3), kernel_backend="torch")
    m.setup_stream(s)
    m.on_experience_start(s.experiences[0])
    assert m.unused_trunk == {"model.norm.weight", "model.norm.bias", "model.cls_token"}
    assert m.block.num_heads == 12 and m.block.hidden == 1536
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    before = m.backbone.model.blocks[0].attn.qk.weight.detach().clone()
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
    m.compute_loss(x, y, None).backward()
    opt.step()
    assert not torch.equal(before, m.backbone.model.blocks[0].attn.qk.weight)


def test_gate_lr_puts_the_gate_embeddings_in_their_own_group():
    s = tiny_stream()
    m = tiny_gcab(s, gate_lr=0.5)
    m.on_experience_start(s.experiences[1])
    opt = m.configure_optimizers()
    rest, gates = opt.param_groups
    assert {id(p) for p in gates["params"]} == {id(m.e0[1]), id(m.e2[1])}
    assert gates["lr"] == 0.5 and gates["weight_decay"] == 0.0
    assert rest["lr"] == 0.01 and rest["weight_decay"] == 0.1
    assert id(m.task_tokens[1]) in {id(p) for p in rest["params"]}
    default = tiny_gcab(s)
    default.on_experience_start(s.experiences[0])
    assert len(default.configure_optimizers().param_groups) == 1
    with pytest.raises(ValueError, match="method.gate_lr"):
        tiny_gcab(gate_lr=0.0)
