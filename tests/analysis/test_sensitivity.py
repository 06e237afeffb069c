"""Sensitivity tracker: hand-computed drifts for the three normalisations, ranking, table/plot files, state."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from cl.analysis.sensitivity import SensitivityTracker


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2, bias=False)
        self.b = nn.BatchNorm1d(2)

    def trainable_parameters(self):
        return list(self.parameters())


def _set(model: Tiny, a: list[float], bw: list[float]) -> None:
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor(a).view(2, 2))
        model.b.weight.copy_(torch.tensor(bw))
        model.b.bias.zero_()


@pytest.mark.parametrize("norm", ["spec", "relative", "per_param"])
def test_drift_matches_hand_computation(norm):
    m = Tiny()
    tr = SensitivityTracker(normalization=norm)
    _set(m, [1, 0, 0, 1], [1, 1])
    tr.record(m, -1)
    _set(m, [1, 0, 0, 1], [1, 1])
    tr.record(m, 0)
    _set(m, [2, 0, 0, 1], [1, 1])  # ||d||^2 = 1 on a (4 params, ||theta||^2 = 2)
    tr.record(m, 1)
    _set(m, [2, 0, 0, 1], [1, 3])  # ||d||^2 = 4 on b (4 params: weight + bias, ||theta||^2 = 2)
    tr.record(m, 2)
    want = {"spec": (1 / 2 / 4, 4 / 2 / 4), "relative": (1 / 2, 4 / 2), "per_param": (1 / 4, 4 / 4)}[norm]
    assert tr.labels == [(-1, 0), (0, 1), (1, 2)]
    assert tr.drift["a"][1] == pytest.approx(want[0]) and tr.drift["a"][2] == 0.0
    assert tr.drift["b"][2] == pytest.approx(want[1]) and tr.drift["b"][1] == 0.0
    # the score averages the transitions between experiences, without init -> 0
    scores = tr.scores()
    assert scores["a"] == pytest.approx(want[0] / 2) and scores["b"] == pytest.approx(want[1] / 2)
    assert tr.ranking() == ["b", "a"]


def test_table_plot_and_state(tmp_path):
    m = Tiny()
    tr = SensitivityTracker()
    for t in range(-1, 3):
        with torch.no_grad():
            m.a.weight.mul_(1.5)
        tr.record(m, t)
    paths = tr.write(tmp_path)
    assert [p.name for p in paths] == ["sensitivity.csv", "sensitivity.png"]
    rows = list(csv.reader(open(paths[0])))
    assert rows[0] == ["module", "type", "numel", "init->0", "0->1", "1->2", "score", "rank"]
    assert rows[1][0] == "a" and rows[1][1] == "Linear" and float(rows[2][-2]) == 0.0
    assert paths[1].stat().st_size > 1000
    fresh = SensitivityTracker()
    fresh.load_state_dict(tr.state_dict())
    assert fresh.scores() == tr.scores()
    with torch.no_grad():
        m.a.weight.mul_(1.5)
    fresh.record(m, 3)
    tr.record(m, 3)
    assert fresh.drift["a"][-1] == tr.drift["a"][-1] and not math.isnan(fresh.drift["a"][-1])


def test_bad_normalization_is_named():
    with pytest.raises(ValueError, match="sensitivity.normalization='l2'"):
        SensitivityTracker(normalization="l2")
