"""experiments/bench/mil_scaling.py: a step runs for a chunked GDAT on a small bag, and runs predicted over the memory
limit are reported as not fitting without being started (the timings and peaks are the benchmark's, not a test's)."""

from __future__ import annotations

import json

from experiments.bench import mil_scaling


def test_predicted_sizes():
    assert mil_scaling.predicted_gib("gdat_chunk", 10**6) == 0.0
    assert mil_scaling.predicted_gib("full", 10**4) > 8 > mil_scaling.predicted_gib("full", 6000)
    assert mil_scaling.predicted_gib("gdat", 10**5) > 8 > mil_scaling.predicted_gib("gdat", 10**4)


def test_child_step_and_skipped_rows(capsys, monkeypatch):
    for name, value in {"IN_DIM": 32, "DIM": 16, "HEADS": 2}.items():
        monkeypatch.setattr(mil_scaling, name, value)
    row = mil_scaling.child("gdat_chunk", 300, repeats=0, threads=1, chunk=128)
    assert row["seconds"] > 0 and row["peak_gib"] >= 0
    mil_scaling.main(["--sizes", "100000", "--models", "full", "gdat"])  # neither is started
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["fits"]) for r in rows] == [("full", False), ("gdat", False)]
    assert all("not run" in r["note"] for r in rows)
