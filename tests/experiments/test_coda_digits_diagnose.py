"""experiments/coda_digits/diagnose.py (issue 20): the diagnosis of the prompt methods' class-incremental loss reads a
real run: the head's A_T equals the run's, the frozen-feature nearest-class-mean A_T equals a SimpleCIL run's on the
same stream, and on a stream of 2 classes per experience the head-row sum of an experience stays at its initial value
under the prompt methods' masked loss (and moves without the mask)."""

from __future__ import annotations

import json

import pytest

from experiments.coda_digits.diagnose import diagnose, main
from tests.helpers import run_cl

# the 5 x 2 stream (2 classes per experience), one batch per experience, only the SimpleCIL reference
SMALL = ["scenario.n_experiences=5", "+trainer.limit_train_batches=1", "logger=none", "callbacks.flops=null"]
NO_EXTRAS = ["callbacks.finetune_reference=null", "callbacks.linear_probe_reference=null"]


def _run(make_cfg, tmp_path, *extra: str) -> tuple[dict, object]:
    run_dir = tmp_path / "run"
    cfg = make_cfg("experiment=coda_digits", *SMALL, *NO_EXTRAS, *extra, run_dir=run_dir)
    run_cl(cfg)
    return json.loads((run_dir / "metrics.json").read_text()), run_dir


def test_diagnosis_of_a_coda_run(make_cfg, tmp_path, capsys):
    saved, run_dir = _run(make_cfg, tmp_path)
    r = diagnose(run_dir)
    assert r["head"] == pytest.approx(saved["avg_acc"], abs=1e-6)
    assert r["ncm_frozen"] == pytest.approx(saved["reference"]["simplecil"]["avg_acc"], abs=1e-6)
    assert 0.0 <= r["ncm_prompted"] <= 1.0 and 0.0 <= r["ncm_prompted_incremental"] <= 1.0
    assert len(r["experiences"]) == 5
    for e in r["experiences"]:
        assert e["row_sum_change"] < 1e-5 and e["bias_sum_change"] < 1e-5, e  # the masked loss never moves the sum
        assert e["learned_norm"] > 1e-3, e  # while the rows themselves were trained
    main([str(run_dir)])
    assert "ncm_frozen" in capsys.readouterr().out


def test_without_the_mask_the_head_row_sum_moves(make_cfg, tmp_path):
    _, run_dir = _run(make_cfg, tmp_path, "method.mask_past_in_training=false")
    second = diagnose(run_dir)["experiences"][0]  # experience 0's rows get gradient again in experience 1
    assert second["row_sum_change"] > 1e-3, second
