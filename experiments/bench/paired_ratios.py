"""Paired timing ratios with bootstrap confidence intervals, for benchmarks whose sides run interleaved.

A benchmark that interleaves sides A and B over units (rounds, or experiences within a round) gets one (A, B) pair of
times per unit. On a shared or virtual machine the time of one unit drifts by 5-20 % from unit to unit, more than the
1-2 % effects some goals name; the pair's ratio removes most of the drift (both sides ran seconds apart), and what is
left is resolved by many units. This module reports, for one pair of sides:

* the median of the per-unit ratios A_i / B_i with its interquartile range,
* the ratio of totals sum(A) / sum(B),
* a percentile-bootstrap confidence interval of each (units resampled with replacement, pairs kept together),

and a verdict against a goal "A/B <= g": ``met`` when the interval's upper end is at most g, ``missed`` when its lower
end is above g, else ``not resolved``. The verdict uses the ratio of totals: it is the cost over the whole measured
work (what "adds x % to a run" means), and with ratios that scatter symmetrically it has the narrower interval.

Units measured in one process share that process's state (memory layout, allocator, caches), and their ratios can
shift together by ~1 % from one process to the next. With ``groups`` (the process of each unit), the bootstrap
resamples whole processes (a cluster bootstrap), so that the interval includes that spread; without, it treats the
units as independent, which is too narrow when processes differ.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PairedRatio:
    units: int
    groups: int  # clusters resampled together by the bootstrap (``units`` when none were given)
    median: float
    q1: float
    q3: float
    median_ci: tuple[float, float]
    total: float
    total_ci: tuple[float, float]

    def verdict(self, goal: float) -> str:
        low, high = self.total_ci
        return "met" if high <= goal else "missed" if low > goal else "not resolved"


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of already sorted values, linear between ranks."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def paired_ratio(
    a: Sequence[float],
    b: Sequence[float],
    groups: Sequence[int] | None = None,
    level: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> PairedRatio:
    """Statistics of A/B over paired units (``a[i]`` and ``b[i]`` measured side by side); ``groups[i]``: the cluster
    (process) of unit i, resampled as a whole by the bootstrap."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_ratio needs as many A as B times, at least one: got {len(a)} and {len(b)}")
    if groups is not None and len(groups) != len(a):
        raise ValueError(f"paired_ratio: {len(groups)} groups for {len(a)} units")
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    q1, med, q3 = quartiles(ratios)
    rng = random.Random(seed)
    clusters: dict[int, list[int]] = {}
    for i, g in enumerate(groups if groups is not None else range(len(a))):
        clusters.setdefault(g, []).append(i)
    members = list(clusters.values())
    medians, totals = [], []
    for _ in range(resamples):
        idx = [i for _ in members for i in members[rng.randrange(len(members))]]
        medians.append(statistics.median(ratios[i] for i in idx))
        totals.append(sum(a[i] for i in idx) / sum(b[i] for i in idx))
    medians.sort()
    totals.sort()
    tail = (1.0 - level) / 2
    return PairedRatio(
        units=len(a),
        groups=len(members),
        median=med,
        q1=q1,
        q3=q3,
        median_ci=(percentile(medians, tail), percentile(medians, 1 - tail)),
        total=sum(a) / sum(b),
        total_ci=(percentile(totals, tail), percentile(totals, 1 - tail)),
    )


def pool(paths: Sequence[str], a: str, b: str) -> tuple[PairedRatio, PairedRatio]:
    """Wall-clock A/B over the units of several saved runs (``stream_overhead.py --save``): over units, and over
    processes (each process of each run one cluster)."""
    import json

    wall_a: list[float] = []
    wall_b: list[float] = []
    groups: list[int] = []
    for path in paths:
        saved = json.loads(open(path).read())
        units, processes = saved["units"], saved["process"] or [0] * len(saved["units"][a])
        base = max(groups, default=-1) + 1
        wall_a += [u[0] for u in units[a]]
        wall_b += [u[0] for u in units[b]]
        groups += [base + g for g in processes]
    return paired_ratio(wall_a, wall_b), paired_ratio(wall_a, wall_b, groups)


if __name__ == "__main__":  # python experiments/bench/paired_ratios.py engine bare 1.02 RUN.json [RUN.json ...]
    import sys

    side_a, side_b, goal, *files = sys.argv[1:]
    units, processes = pool(files, side_a, side_b)
    print(
        f"{side_a}/{side_b} over {len(files)} runs, {units.units} units, {processes.groups} processes: ratio of totals "
        f"{units.total:.4f}x, 95 % CI over units {units.total_ci[0]:.4f}-{units.total_ci[1]:.4f}, over processes "
        f"{processes.total_ci[0]:.4f}-{processes.total_ci[1]:.4f}; goal <= {float(goal):.2f}x: "
        f"{processes.verdict(float(goal))}"
    )
