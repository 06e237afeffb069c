"""experiments/bench/paired_ratios.py: the ratio of totals and its bootstrap interval, and the verdict against a goal
drawn from the interval (met only when the whole interval is at or below the goal)."""

from __future__ import annotations

import random

import pytest

from experiments.bench.paired_ratios import paired_ratio, percentile


def noisy_pairs(ratio: float, spread: float, n: int, seed: int = 1) -> tuple[list[float], list[float]]:
    """Pairs whose shared drift (both sides of a unit slower or faster together) is large and whose own noise is
    ``spread``: B ~ 3-5 s, A = B * ratio * (1 + noise)."""
    rng = random.Random(seed)
    b = [rng.uniform(3.0, 5.0) for _ in range(n)]
    a = [x * ratio * (1.0 + rng.uniform(-spread, spread)) for x in b]
    return a, b


def test_totals_and_median_are_the_pairs_own():
    a, b = [2.0, 3.0, 6.0], [1.0, 3.0, 4.0]
    s = paired_ratio(a, b, resamples=200)
    assert s.total == pytest.approx(11.0 / 8.0)
    assert s.median == pytest.approx(1.5)  # ratios 2.0, 1.0, 1.5
    assert s.units == 3
    assert s.total_ci[0] <= s.total <= s.total_ci[1]


def test_verdicts():
    tight = paired_ratio(*noisy_pairs(1.01, 0.002, 60))  # the drift cancels in the pairs: a tight interval at 1.01
    assert 1.0 < tight.total_ci[0] and tight.total_ci[1] < 1.02
    assert tight.verdict(1.02) == "met"
    assert tight.verdict(1.005) == "missed"
    wide = paired_ratio(*noisy_pairs(1.01, 0.08, 20, seed=3))
    assert wide.total_ci[0] < 1.02 < wide.total_ci[1]
    assert wide.verdict(1.02) == "not resolved"


def test_interval_narrows_with_units():
    few = paired_ratio(*noisy_pairs(1.0, 0.05, 20))
    many = paired_ratio(*noisy_pairs(1.0, 0.05, 320))
    width = lambda s: s.total_ci[1] - s.total_ci[0]  # noqa: E731
    assert width(many) < 0.5 * width(few)


def test_bad_input_and_percentile():
    with pytest.raises(ValueError, match="as many A as B"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        paired_ratio([], [])
    assert percentile([0.0, 1.0, 2.0, 3.0], 0.5) == pytest.approx(1.5)
    assert percentile([0.0, 1.0, 2.0, 3.0], 1.0) == 3.0


def test_groups_widen_the_interval_by_the_spread_between_processes():
    """Eight processes whose ratios differ by up to 2 % (40 tight units each): the interval over units is too narrow
    to contain most process means; the one over processes contains the spread."""
    a, b, groups = [], [], []
    for g, shift in enumerate([0.99, 1.01, 1.0, 1.02, 0.995, 1.005, 1.015, 0.985]):
        ga, gb = noisy_pairs(shift, 0.002, 40, seed=g)
        a, b, groups = a + ga, b + gb, groups + [g] * 40
    units = paired_ratio(a, b)
    processes = paired_ratio(a, b, groups)
    assert processes.groups == 8 and units.groups == 320
    assert units.total == processes.total
    width = lambda s: s.total_ci[1] - s.total_ci[0]  # noqa: E731
    assert width(processes) > 3 * width(units)
    assert processes.total_ci[0] < 1.0 < 1.01 < processes.total_ci[1]
    with pytest.raises(ValueError, match="groups"):
        paired_ratio(a, b, groups[:-1])
