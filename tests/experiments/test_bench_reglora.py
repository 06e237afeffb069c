"""experiments/bench/reglora.py on a small shape: the three penalty forms (fused C++, sparse CSR, full B @ A) agree on
its data and the position storage is a quarter of int64 pairs (the timings are the benchmark's, not a test's)."""

from __future__ import annotations

from experiments.bench import reglora


def test_bench_runs_on_a_small_shape(monkeypatch):
    monkeypatch.setitem(reglora.SHAPES, "small", (96, 64, 4, 32))
    row = reglora.bench_shape("small", experiences=3, repeats=1)
    assert row["grad_rel_diff_cpp"] < 1e-5 and row["grad_rel_diff_torch"] < 1e-5
    assert row["positions"] == 3 * int(0.02 * 96 * 64) and row["unique_positions"] <= row["positions"]
    assert row["positions_bytes_int32"] * 4 == row["positions_bytes_int64_pairs"]
    for form in ("cpp", "torch", "full"):
        assert 0 < row[f"{form}_fraction_of_step"] < 1
