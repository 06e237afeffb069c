"""finetune / joint / EWC / LwF checked against their equations on small hand-built cases."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cl.data.stream import Experience, Stream
from cl.methods.ewc import EWC, _buffer_name
from cl.methods.finetune import Finetune
from cl.methods.joint import Joint
from cl.methods.lwf import LwF


class TinyBackbone(nn.Module):
    def __init__(self, d_in: int = 4, d: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d)
        self.num_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


def _experience(i: int, classes: list[int], n: int = 6) -> Experience:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(n, 4, generator=g)
    y = torch.tensor([classes[k % len(classes)] for k in range(n)])
    ds = TensorDataset(x, y)
    ds.targets = y.tolist()
    return Experience(i, classes, 0, ds, ds)


def _stream(n_classes: int = 4) -> Stream:
    exps = [_experience(0, [0, 1]), _experience(1, [2, 3])]
    return Stream("class", exps, n_classes, [0, 1, 2, 3], None)


def _method(cls, **kw):
    torch.manual_seed(0)
    m = cls(TinyBackbone(), 4, partial(torch.optim.SGD, lr=0.1), **kw)
    m.setup_stream(_stream())
    return m


def test_class_incremental_training_masks_unseen_classes():
    m = _method(Finetune)
    m.on_experience_start(_stream().experiences[0])
    assert m.train_logit_mask().tolist() == [True, True, False, False]
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    logits = m(x)
    expected = F.cross_entropy(logits[:, :2], y)  # masked logits contribute exp(min) = 0 to the softmax
    assert torch.allclose(m.compute_loss(x, y, (x, y)), expected, atol=1e-6)
    m.on_experience_start(_stream().experiences[1])
    assert m.train_logit_mask().tolist() == [True, True, True, True]
    m.mask_past_in_training = True
    assert m.train_logit_mask().tolist() == [False, False, True, True]


def test_joint_trains_on_the_union_of_experiences_so_far():
    s = _stream()
    m = _method(Joint)
    assert len(m.train_dataset(s.experiences[0], s)) == 6
    assert len(m.train_dataset(s.experiences[1], s)) == 12


def test_ewc_penalty_and_online_fisher_accumulation():
    s = _stream()
    m = _method(EWC, ewc_lambda=2.0, gamma=0.5)
    m.on_experience_start(s.experiences[0])
    loader = lambda ds: DataLoader(ds, batch_size=3)  # noqa: E731
    m.on_experience_end(s.experiences[0], loader)
    # F_0 is the exact empirical Fisher: mean over samples of squared per-sample gradients of CE on masked logits
    x, y = s.experiences[0].train.tensors
    expect = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    for i in range(len(y)):
        m.zero_grad()
        F.cross_entropy(m.apply_mask(m(x[i : i + 1]), m.train_logit_mask()), y[i : i + 1]).backward()
        for n, p in m.named_parameters():
            expect[n] += p.grad.detach() ** 2 / len(y)
    for n in expect:
        assert torch.allclose(getattr(m, _buffer_name("fisher", n)), expect[n], atol=1e-6), n
    # penalty = 1/2 sum F (theta - theta*)^2 after moving the weights
    with torch.no_grad():
        m.head.weight.add_(0.3)
    hand = 0.5 * (expect["head.weight"] * 0.09).sum()
    assert torch.allclose(m.penalty(), hand, atol=1e-6)
    x1, y1 = s.experiences[1].train.tensors
    m.on_experience_start(s.experiences[1])
    ce = F.cross_entropy(m.apply_mask(m(x1), m.train_logit_mask()), y1)
    assert torch.allclose(m.compute_loss(x1, y1, (x1, y1)), ce + 2.0 * hand, atol=1e-6)
    # online (Schwarz et al. 2018): F <- gamma * F + F_1, theta* <- theta; F_1 is the exact Fisher at the current
    # weights on experience 1 (masked to the classes seen so far). Ignoring gamma (F + F_1, or F_1 alone) fails.
    old = {n: getattr(m, _buffer_name("fisher", n)).clone() for n in expect}
    fisher_1 = _exact_fisher(m, *s.experiences[1].train.tensors)
    m.on_experience_end(s.experiences[1], loader)
    for n in expect:
        new = getattr(m, _buffer_name("fisher", n))
        assert torch.allclose(new, 0.5 * old[n] + fisher_1[n], rtol=1e-5, atol=1e-8), n
        assert torch.equal(getattr(m, _buffer_name("anchor", n)), dict(m.named_parameters())[n].detach())
    assert float(old["head.weight"].abs().sum()) > 1e-3  # the test sees gamma only where F_0 is nonzero


def _exact_fisher(m, x, y):
    out = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    for i in range(len(y)):
        m.zero_grad()
        F.cross_entropy(m.apply_mask(m(x[i : i + 1]), m.train_logit_mask()), y[i : i + 1]).backward()
        for n, p in m.named_parameters():
            out[n] += p.grad.detach() ** 2 / len(y)
    m.zero_grad()
    return out


def test_ewc_rejects_bad_config():
    with pytest.raises(ValueError, match=r"method.fisher_mode='exact'; allowed"):
        _method(EWC, fisher_mode="exact")
    with pytest.raises(ValueError, match=r"method.gamma=2.0; allowed: \[0, 1\]"):
        _method(EWC, gamma=2.0)


def test_lwf_distils_old_class_logits_with_temperature():
    s = _stream()
    m = _method(LwF, alpha=1.5, temperature=2.0)
    m.on_experience_start(s.experiences[0])
    x, y = s.experiences[1].train.tensors
    # no old model yet: plain masked CE
    assert torch.allclose(m.compute_loss(x, y, (x, y)), F.cross_entropy(m.apply_mask(m(x), m.train_logit_mask()), y))
    m.on_experience_end(s.experiences[0], None)
    with torch.no_grad():
        old_logits = m(x)[:, :2].clone()
        m.head.weight.mul_(1.7)  # the current model drifts away from the snapshot
    m.on_experience_start(s.experiences[1])
    logits = m(x)
    ce = F.cross_entropy(m.apply_mask(logits, m.train_logit_mask()), y)
    p_old = F.softmax(old_logits / 2.0, dim=1)
    kl = (p_old * (p_old.log() - F.log_softmax(logits[:, :2] / 2.0, dim=1))).sum(1).mean()
    assert torch.allclose(m.compute_loss(x, y, (x, y)), ce + 1.5 * 4.0 * kl, atol=1e-6)
    assert all(not p.requires_grad for p in m.old_model.parameters())
    old_ids = {id(p) for p in m.old_model.parameters()}
    assert old_ids.isdisjoint(id(p) for p in m.trainable_parameters())


def _task_stream() -> Stream:
    exps = [_experience(i, [2 * i, 2 * i + 1]) for i in range(3)]
    for e in exps:
        e.task_label = e.index
    return Stream("task", exps, 6, list(range(6)), None)


def test_lwf_task_incremental_has_one_distillation_term_per_old_task_head():
    """Li & Hoiem's multi-head loss: each old task's head gets its own softmax and KD term; one softmax over the union
    of old classes (the class-incremental form) gives a different value and fails here."""
    s = _task_stream()
    torch.manual_seed(0)
    m = LwF(TinyBackbone(), 6, partial(torch.optim.SGD, lr=0.1), alpha=1.5, temperature=2.0)
    m.setup_stream(s)
    for e in s.experiences[:2]:
        m.on_experience_start(e)
        m.on_experience_end(e, None)
    x, y = s.experiences[2].train.tensors
    with torch.no_grad():
        old_logits = m(x).clone()
        m.head.weight.mul_(1.7)
        m.head.bias.add_(torch.tensor([0.5, -0.5, 1.0, 0.0, 0.0, 0.0]))
    m.on_experience_start(s.experiences[2])
    logits = m(x)
    ce = F.cross_entropy(logits[:, 4:], y - 4)  # task-IL: CE over the current task's classes only

    def kl(cols: slice) -> torch.Tensor:
        p_old = F.softmax(old_logits[:, cols] / 2.0, dim=1)
        return (p_old * (p_old.log() - F.log_softmax(logits[:, cols] / 2.0, dim=1))).sum(1).mean()

    per_head = ce + 1.5 * 4.0 * (kl(slice(0, 2)) + kl(slice(2, 4)))
    union = ce + 1.5 * 4.0 * kl(slice(0, 4))
    assert abs(float((per_head - union).detach())) > 1e-3  # the two forms differ on this case
    assert torch.allclose(m.compute_loss(x, y, (x, y)), per_head, atol=1e-6)
    assert [g.nonzero().flatten().tolist() for g in m.distillation_groups()] == [[0, 1], [2, 3]]
