"""A ``-m`` sweep survives a bad job (issue 18, item 8): the job is recorded as failed in its own directory, the later
jobs run, the sweep's exit status says something failed, and ``experiments.aggregate`` lists the failed job."""

from __future__ import annotations

import json

import pytest

from experiments.aggregate import aggregate
from tests.helpers import TINY, cli_overrides, run_module


@pytest.mark.timeout(600)
def test_a_bad_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("scenario.n_experiences")]
    args = ["-m", f"hydra.sweep.dir={sweep}", *cli_overrides([*tiny, "scenario.n_experiences=3,2"])]
    res = run_module("cl.run", args, timeout=500)
    assert res.returncode == 1, res.stderr[-3000:]  # something failed
    assert "scenario.n_experiences=3" in res.stderr and "failed.json" in res.stderr
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert failed["type"] == "ConfigurationError" and "scenario.n_experiences=3" in failed["overrides"]
    assert "n_experiences" in failed["error"]
    assert not (sweep / "0" / "metrics.json").exists()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["complete"] is True  # the later job ran
    result = aggregate(sweep)
    assert [r.path.name for r in result["incomplete"]] == ["0"]
    assert result["incomplete"][0].problem.startswith("failed: ConfigurationError")
    assert [r["n_runs"] for r in result["rows"]] == [1]
    md = (sweep / "aggregate" / "summary.md").read_text()
    assert "`0`: failed: ConfigurationError" in md
