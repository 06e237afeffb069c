"""Bag- and instance-level MIL scores (cl/metrics/mil.py) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from cl.metrics.mil import bag_scores, instance_scores, optimal_threshold


def test_bag_scores_binary_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    labels = torch.tensor([0, 0, 1, 1])
    s = bag_scores(probs, labels, [0, 1])
    assert s["acc"] == pytest.approx(0.5)
    # positives score 0.7, 0.2; negatives 0.1, 0.6: pairs won 0.7>0.1, 0.7>0.6, 0.2>0.1 -> 3 of 4
    assert s["auc"] == pytest.approx(0.75)
    # class 0: TP 1 (row 0), FP 1 (row 3), FN 1 (row 1) -> F1 0.5; class 1 the same -> macro 0.5
    assert s["f1"] == pytest.approx(0.5)


def test_bag_scores_class_incremental_counts_other_classes_as_wrong():
    probs = torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.1, 0.6, 0.1, 0.2], [0.05, 0.05, 0.1, 0.8]])
    s = bag_scores(probs, torch.tensor([2, 3, 3]), [2, 3])
    assert s["acc"] == pytest.approx(2 / 3)  # row 1 predicts class 1, outside the experience
    # class 2: TP 1, FP 0, FN 0 -> 1; class 3: TP 1, FN 1 -> 2/3; macro 5/6
    assert s["f1"] == pytest.approx(5 / 6)


def test_instance_scores_threshold_dice_iou_by_hand():
    probs = [torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([0.3, 0.7, 0.05])]
    labels = [torch.tensor([1, 1, 0, -1]), torch.tensor([0, 0, 0])]
    s = instance_scores(probs, labels, [True, False])
    # known: positives 0.9, 0.8; negatives 0.1, 0.3, 0.7, 0.05 -> AUC 1; threshold between 0.7 and 0.8
    assert s["auc"] == pytest.approx(1.0) and 0.7 < s["threshold"] <= 0.8 + 1e-6
    assert s["acc"] == pytest.approx(1.0) and s["f1"] == pytest.approx(1.0)
    assert s["dice"] == pytest.approx(2 * 2 / (2 + 2 + 1e-5)) and s["iou"] == pytest.approx(2 / (2 + 1e-5))
    assert instance_scores([torch.tensor([0.5])], [torch.tensor([-1])], [True]) is None


def test_optimal_threshold_is_youden():
    p = torch.tensor([0.1, 0.4, 0.35, 0.8])
    y = torch.tensor([0, 0, 1, 1])
    thr = optimal_threshold(p, y)
    tpr = float(((p >= thr) & (y == 1)).sum() / 2)
    fpr = float(((p >= thr) & (y == 0)).sum() / 2)
    assert tpr - fpr == pytest.approx(0.5)
