"""BPPL (CoMEL's bag-prototype pseudo-labels) on a hand-built bag, its gating and the adaptive tau2."""

from __future__ import annotations

import math

import pytest
import torch

from cl.modules.bppl import BPPL, bag_pseudo_labels, instance_loss

H = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
A = torch.tensor([0.4, 0.4, 0.1, 0.1])


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def test_pseudo_labels_by_hand():
    z = [0.77, 0.23]  # sum_i a_i h_i
    z_neg = [0.41, 0.59]  # w = (1 - a) / sum(1 - a) = [0.2, 0.2, 0.3, 0.3]
    labels, conf = bag_pseudo_labels(A, H, torch.tensor(z))
    want_labels, want_conf = [], []
    for h in H.tolist():
        neg, pos = _cos(h, z_neg), _cos(h, z)
        want_labels.append(int(pos > neg))
        want_conf.append(1.0 / (1.0 + math.exp(-abs(pos - neg))))
    assert labels.tolist() == want_labels == [1, 1, 0, 0]
    torch.testing.assert_close(conf, torch.tensor(want_conf))


def test_instance_loss_by_hand():
    p = torch.tensor([0.9, 0.6, 0.2, 0.3])
    y = torch.tensor([1, 1, 0, 0])
    keep = torch.tensor([True, False, True, True])
    want = (3 / 4) * -(math.log(0.9 + 1e-10) + math.log(0.8 + 1e-10) + math.log(0.7 + 1e-10)) / 3
    assert float(instance_loss(p, y, keep)) == pytest.approx(want, rel=1e-6)
    assert float(instance_loss(p, y, torch.zeros(4, dtype=torch.bool))) == 0.0


def _inputs(bag_logits):
    logits = torch.tensor(bag_logits)
    probs = torch.tensor([[0.9, 0.6, 0.2, 0.3]])
    return logits, A[None], probs, H[None], torch.tensor([[0.77, 0.23]]), torch.ones(1, 4, dtype=torch.bool)


def test_gating_positive_correct_confident_bags_only():
    bppl = BPPL()
    confident = [[-5.0, 5.0]]
    loss, kept = bppl.loss(*_inputs(confident)[:1], torch.tensor([1]), *_inputs(confident)[1:])
    assert kept > 0 and float(loss) > 0
    for logits, y in (([[-5.0, 5.0]], 0), ([[5.0, -5.0]], 1), ([[0.0, 0.1]], 1)):  # negative, wrong, unconfident
        loss, kept = bppl.loss(*_inputs(logits)[:1], torch.tensor([y]), *_inputs(logits)[1:])
        assert kept == 0 and float(loss) == 0.0
    # instances are kept iff their confidence exceeds tau2
    bppl.tau2.fill_(0.99)
    loss, kept = bppl.loss(*_inputs(confident)[:1], torch.tensor([1]), *_inputs(confident)[1:])
    assert kept == 0


def test_tau2_update_from_epoch_quality():
    bppl = BPPL(tau=0.5)
    assert float(bppl.tau2) == 0.5
    for logits, y in (([[-2.0, 2.0]], 1), ([[3.0, -3.0]], 1)):  # one correct, one wrong
        bppl.loss(*_inputs(logits)[:1], torch.tensor([y]), *_inputs(logits)[1:])
    c = 1 / (1 + math.exp(-4.0))
    bppl.end_epoch()
    assert float(bppl.tau2) == pytest.approx(0.5 * (1 + 0.5 * c / 2))
    assert float(bppl.n_slides) == 0.0


def test_positive_classes_override_the_odd_rule():
    assert BPPL().is_positive(torch.tensor([0, 1, 2, 3])).tolist() == [False, True, False, True]
    assert BPPL(positive_classes=[2]).is_positive(torch.tensor([0, 1, 2, 3])).tolist() == [False, False, True, False]
