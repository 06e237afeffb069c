"""experiments/bench/fisher_family.py builds the family it reports and its worker's ratios and error are sane (the
timings themselves are the benchmark's, not a test's)."""

from __future__ import annotations

import argparse

import pytest
import torch

from experiments.bench import fisher_family


def test_family_spans_the_issue_grid_and_token_counts() -> None:
    widths, tokens, depths = (sorted({m[i] for m in fisher_family.FAMILY}) for i in range(3))
    assert (widths[0], widths[-1], tokens[0], tokens[-1], depths[0], depths[-1]) == (64, 768, 16, 256, 2, 12)
    model, shape = fisher_family.build(64, 64, 2)
    assert model.patch_embed(torch.zeros(1, *shape)).shape[1] == 64  # 64 patch tokens (+ the cls token)
    assert sum(p.numel() for p in fisher_family.build(64, 16, 2)[0].parameters()) >= 1e5  # smallest model in the goal
    assert fisher_family.samples_for(10**8, 256, 10.0) == 2 * fisher_family.BATCH  # at least two batches
    assert fisher_family.samples_for(10**5, 16, 10.0) == 512
    with pytest.raises(ValueError, match="tokens=20"):
        fisher_family.build(64, 20, 2)


def test_worker_reports_ratios_and_an_exact_result() -> None:
    args = argparse.Namespace(width=64, tokens=16, depth=2, threads=1, repeats=1, gflop=1.0, samples=128)
    row = fisher_family._worker(args)
    assert row["samples"] == 128 and row["params"] >= 1e5 and row["fallback"] == []
    assert row["ratio"] > 0 and len(row["ratios"]) == 1 and "mem_ratio" in row  # RSS in a fresh worker only
    assert row["rel_err"] < 1e-5
