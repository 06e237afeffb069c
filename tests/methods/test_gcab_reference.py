"""GCAB-CFDC against the reference code's algorithm (github OcraM17/GCAB-CFDC @599e44d) on the same weights.

The oracle below restates, step by step and in the reference's own tensor layouts, ``ClassAttention.forward`` and the
class-attention branch of ``Block.forward`` (``continual/convit.py``), ``GCAB.forward_features`` (the projector loop,
``continual/GCAB.py``), ``forward`` of ``continual/engine_GCAB.py`` (BCE + mask regulariser + drift loss), the
gradient masks of ``GCAB.get_view_for`` and the embedding-gradient compensation of ``ContinualScaler.pre_step``
(``continual/scaler.py``). It runs in float64 with a moderate ``s`` so that the reference's literal compensation is
accurate, and the method must agree with it on logits, loss and every gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl.modules.drift_projector import DriftProjector
from tests.methods.gcab_helpers import DIM, HEADS, tiny_gcab, tiny_stream


def _ref_gates(m, c, s, n_tasks):
    e0, e2 = m.e0[c], m.e2[c]
    if n_tasks >= 2 and c < n_tasks - 1:
        return torch.where(torch.sigmoid(s * e0) > 0.5, 1.0, 0.0).double(), torch.where(
            torch.sigmoid(s * e2) > 0.5, 1.0, 0.0
        ).double()
    return torch.sigmoid(s * e0), torch.sigmoid(s * e2)


def _ref_block(blk, x, gc0, gc2):
    """The reference Block.forward for a ClassAttention block: x = cat(task token, patch tokens)."""
    a, h = blk.attn, HEADS
    cls_token = x[:, :1]
    xx = blk.norm1(x)
    B, N, C = xx.shape
    q = a.q(xx[:, 0] * gc0.view(1, -1).expand_as(xx[:, 0])).unsqueeze(1).reshape(B, 1, h, C // h).permute(0, 2, 1, 3)
    q = q * gc0.view(1, h, 1, -1).expand_as(q)
    x_b = xx * gc0.view(1, 1, -1).expand_as(xx)
    k = a.k(x_b).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
    k = k * gc0.view(1, h, 1, -1).expand_as(k)
    q = q * (C // h) ** -0.5
    v = a.v(x_b).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    x_cls = (attn @ v).transpose(1, 2).reshape(B, 1, C)
    x_cls = x_cls * gc0.view(1, 1, -1).expand_as(x_cls)
    x_cls = a.proj(x_cls) * gc0.view(1, 1, -1).expand_as(x_cls)
    cls_token = x_cls[:, :1] + cls_token
    y = blk.norm2(cls_token) * gc0.view(1, 1, -1)
    y = blk.mlp.act(blk.mlp.fc1(y)) * gc2.view(1, 1, -1)
    y = blk.mlp.fc2(y) * gc0.view(1, 1, -1)
    return y + cls_token


def _ref_forward(m, x, s, inference, projectors):
    """GCAB.forward_features + forward_classifier ('1-1' heads concatenated)."""
    n_tasks = int(m.experience_index) + 1
    feats = m.backbone.block_tokens(x)
    tokens = []
    for c in range(n_tasks):
        x_act = feats.clone()
        if n_tasks > 1 and inference is not None:
            x_act = torch.permute(x_act.unsqueeze(2), (0, 3, 2, 1))  # (B, D, 1, N)
            for ind in range(len(projectors) - 1, c - 1, -1):
                x_act = projectors[ind](x_act)
            x_act = torch.permute(x_act.squeeze(2), (0, 2, 1))
        gc0, gc2 = _ref_gates(m, c, s, n_tasks)
        cls = m.task_tokens[c].expand(x.shape[0], -1)[:, None]
        tokens.append(_ref_block(m.block, torch.cat((cls, x_act), dim=1), gc0, gc2)[:, 0])
    logits = torch.cat([m.heads[c](tokens[c]) for c in range(n_tasks)], dim=1)
    return logits, feats, list(_ref_gates(m, n_tasks - 1, s, n_tasks))


def _conv_projector(p: DriftProjector, n_tokens: int) -> nn.Module:
    """The reference's Conv1x1 -> LayerNorm((D, 1, N)) -> ReLU -> Conv1x1 with the weights of ``p`` (norm='sample')."""
    ref = nn.Sequential(
        nn.Conv2d(DIM, DIM, (1, 1)), nn.LayerNorm((DIM, 1, n_tokens)), nn.ReLU(), nn.Conv2d(DIM, DIM, (1, 1))
    )
    ref = ref.double()
    with torch.no_grad():
        ref[0].weight.copy_(p.fc1.weight[:, :, None, None])
        ref[0].bias.copy_(p.fc1.bias)
        ref[1].weight.copy_(p.norm.weight.t()[:, None, :])
        ref[1].bias.copy_(p.norm.bias.t()[:, None, :])
        ref[3].weight.copy_(p.fc2.weight[:, :, None, None])
        ref[3].bias.copy_(p.fc2.bias)
    return ref


def _setup(projector_norm: str):
    s = tiny_stream()
    torch.manual_seed(3)
    m = tiny_gcab(s, projector_norm=projector_norm, lambda_gcab=0.05, lambda_pfr=0.1).double()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        m.m0_pre.copy_((torch.rand(DIM, generator=gen) < 0.4).double())
        m.m2_pre.copy_((torch.rand(m.block.hidden, generator=gen) < 0.4).double())
        for e in list(m.e0) + list(m.e2):
            e.copy_(torch.randn(e.shape, generator=gen, dtype=torch.float64))
        for p in m.projectors.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    for exp in s.experiences:  # classes 0..5 seen; experience 2 is current; teacher = the trunk now
        m.on_experience_start(exp)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = s.experiences[2].train.tensors[0][:5].double()
    y = torch.tensor([4, 5, 1, 4, 2])
    return m, x, y


def _reference_projectors(m, projector_norm):
    if projector_norm == "sample":
        return [_conv_projector(p, 4) for p in m.projectors]

    class TokenWise(nn.Module):  # the same modules applied in the reference's (B, D, 1, N) layout
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, z):
            return self.p(z.squeeze(2).transpose(1, 2)).transpose(1, 2).unsqueeze(2)

    return [TokenWise(p) for p in m.projectors]


def test_evaluation_logits_equal_the_reference_with_its_projector_cascade():
    for norm in ("sample", "token"):
        m, x, _ = _setup(norm)
        m.eval()
        want, _, _ = _ref_forward(m, x, m.smax, True, _reference_projectors(m, norm))
        torch.testing.assert_close(m(x)[:, :6], want, rtol=1e-10, atol=1e-10)


def test_training_loss_and_every_gradient_equal_the_reference():
    m, x, y = _setup("sample")
    m.train()
    s = 3.0  # moderate: the reference's literal compensation is accurate here
    # reference: forward of engine_GCAB.py, then ContinualScaler.pre_step's gradient edits
    logits, feats, masks = _ref_forward(m, x, s, None, None)
    loss = F.binary_cross_entropy_with_logits(logits, torch.eye(logits.shape[1], dtype=torch.float64)[y])
    reg, count = 0, 0
    for mk, mp in zip(masks, [m.m0_pre, m.m2_pre], strict=True):
        aux = 1 - mp
        reg += (mk * aux).sum()
        count += aux.sum()
    reg = reg / count * m.lambda_gcab
    with torch.no_grad():
        teacher = m._teacher[0].block_tokens(x)
    proj = _conv_projector(m.projectors[1], 4)
    pf = torch.permute(proj(torch.permute(feats.unsqueeze(2), (0, 3, 2, 1))).squeeze(2), (0, 2, 1))
    total = loss + reg + torch.norm(teacher - pf, p=2) * m.lambda_pfr
    params = dict(m.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    grads = torch.autograd.grad(total, [*trainable.values(), proj[0].weight, proj[3].bias], allow_unused=True)
    ref_grads = dict(zip(trainable, grads[:-2], strict=True))
    ref_proj_grads = grads[-2:]  # the projector's gradient, through the reference-layout copy
    g0, g2 = m.m0_pre, m.m2_pre
    views = {  # GCAB.get_view_for
        "block.attn.q.weight": torch.outer(g0, g0),
        "block.attn.k.weight": torch.outer(g0, g0),
        "block.attn.v.weight": torch.outer(g0, g0),
        "block.attn.proj.weight": torch.outer(g0, g0),
        "block.attn.proj.bias": g0,
        "block.mlp.fc1.weight": torch.outer(g2, g0),
        "block.mlp.fc1.bias": g2,
        "block.mlp.fc2.weight": torch.outer(g0, g2),
        "block.mlp.fc2.bias": g0,
    }
    for n, v in views.items():
        ref_grads[n] = ref_grads[n] * (1 - v)
    for n in ("e0.2", "e2.2"):
        e = params[n].detach()
        num = torch.cosh(torch.clamp(s * e, -m.thres_cosh, m.thres_cosh)) + 1
        ref_grads[n] = ref_grads[n] * m.smax / s * num / (torch.cosh(e) + 1)
    # the method
    m._s = s
    mine = m.compute_loss(x, y, None)
    torch.testing.assert_close(mine, total, rtol=1e-12, atol=1e-12)
    m.zero_grad()
    mine.backward()
    m.on_after_backward()
    for n, p in trainable.items():
        if n.startswith("projectors."):
            continue  # compared through the output below (different parameter layout)
        want = ref_grads[n]
        got = p.grad
        if want is None:
            assert got is None or not got.any(), n
            continue
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=n)
    torch.testing.assert_close(m.projectors[1].fc1.weight.grad, ref_proj_grads[0][:, :, 0, 0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(m.projectors[1].fc2.bias.grad, ref_proj_grads[1], rtol=1e-9, atol=1e-12)
