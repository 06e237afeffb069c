"""``alpha=auto``: leave-classes-out calibration (unlearn/calibrate.py): the classes, the criterion, and an end-to-end
run on a tiny digits checkpoint whose report holds the table and whose alpha is the chosen one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import compose_config, run_cl
from unlearn.calibrate import AutoConfig, calibration_classes, choose
from unlearn.context import UnlearnConfigError


def test_calibration_classes_leave_the_forgotten_ones_out_and_are_shared():
    a = calibration_classes(list(range(10)), [3], 3, seed=0)
    b = calibration_classes(list(range(10)), [5], 3, seed=0)
    assert 3 not in a and 5 not in b and len(a) == len(b) == 3
    assert len(set(a) & set(b)) >= 2  # one seeded permutation: most calibration classes are shared
    for c in a:  # forgetting a calibration class swaps in the next class of the permutation
        assert c not in calibration_classes(list(range(10)), [c], 3, seed=0)
    with pytest.raises(UnlearnConfigError, match="no class left"):
        calibration_classes([1, 2], [1, 2], 3, seed=0)


def test_criterion_smallest_retain_drop_among_those_that_forget_else_best_sum():
    auto = AutoConfig(forget_max=0.05, retain_drop_max=0.03)
    rows = [
        {"value": 100, "forget": 0.40, "retain_drop": 0.00},  # gentle: does not forget
        {"value": 25, "forget": 0.04, "retain_drop": 0.02},
        {"value": 10, "forget": 0.00, "retain_drop": 0.01},  # chosen: forgets, smallest drop
        {"value": 1, "forget": 0.00, "retain_drop": 0.20},
    ]
    assert choose(rows, auto) == (rows[2], True)
    rows = [{"value": 5, "forget": 0.30, "retain_drop": 0.10}, {"value": 1, "forget": 0.10, "retain_drop": 0.15}]
    assert choose(rows, auto) == (rows[1], False)  # none qualifies: smallest forget + drop


def test_bad_auto_options_are_refused():
    with pytest.raises(UnlearnConfigError, match="unlearn_method.auto: unknown keys \\['grids'\\]"):
        AutoConfig.from_config({"grids": [1]}, "unlearn_method.auto")
    with pytest.raises(UnlearnConfigError, match="non-empty lists of positive numbers"):
        AutoConfig.from_config({"grid": []}, "unlearn_method.auto")
    from unlearn.methods.ssd import SSD

    with pytest.raises(UnlearnConfigError, match="alpha='often'; allowed: a positive number, auto or null"):
        SSD(alpha="often")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cl_run")
    torch.manual_seed(0)
    run_cl(compose_config(["method=joint", "backbone=cnn_small", "scenario.n_experiences=1", "logger=none"], run_dir))
    return run_dir


def _unlearn(ckpt: Path, out: Path, *overrides: str) -> dict:
    import unlearn.resolvers  # noqa: F401
    from unlearn.pipeline import run_unlearning

    ov = [f"checkpoint={ckpt}", "eval.probe=false", "unlearn_method=ssd", *overrides]
    return run_unlearning(compose_config(ov, out, shrink=False, config_name="unlearn"), out, ov)


def test_alpha_auto_runs_records_its_table_and_reuses_the_cache(trained, tmp_path):
    auto = ["unlearn_method.alpha=auto", "unlearn_method.auto.classes=2", "unlearn_method.auto.grid=[50,5,1]"]
    r = _unlearn(trained, tmp_path / "a", "forget.classes=[3]", *auto, "unlearn_method.auto.lambdas=[1.0,0.5]")
    entry = r["method_info"]["auto"]
    assert 3 not in entry["classes"] and len(entry["classes"]) == 2
    assert [(t["value"], t["lambda"]) for t in entry["table"]] == [(v, lam) for v in (50, 5, 1) for lam in (1, 0.5)]
    best, ok = choose(entry["table"], AutoConfig(**entry["criterion"]))
    assert entry["chosen"] == {"value": best["value"], "lambda": best["lambda"]} and entry["met_criterion"] == ok
    assert r["method_info"]["alpha"] == best["value"] and r["method_info"]["lambda"] == best["lambda"]
    n_cache = len(list((trained / "unlearn_cache").glob("importance-*.safetensors")))
    assert n_cache == 3  # the two calibration classes' D and the forget set's D
    r2 = _unlearn(trained, tmp_path / "b", "forget.classes=[4]", *auto)
    shared = set(entry["classes"]) & set(r2["method_info"]["auto"]["classes"])
    # the shared calibration classes came from the cache: only new classes and the new forget set added entries
    assert len(list((trained / "unlearn_cache").glob("importance-*.safetensors"))) == n_cache + 1 + (2 - len(shared))
    # ... and so did their scored grid models (per-class test counts): nothing re-scored for them
    e2 = r2["method_info"]["auto"]
    assert entry["cached_classes"] == [] and e2["cached_classes"] == sorted(shared)
    for c in shared:
        i, j = entry["classes"].index(c), e2["classes"].index(c)
        first = [t["per_class"][i]["forget"] for t in entry["table"] if t["lambda"] == 1.0]
        assert first == [t["per_class"][j]["forget"] for t in e2["table"]]
    # the cached rows equal a recomputation without any cache (cache=false: importances and rows recomputed)
    r3 = _unlearn(trained, tmp_path / "c", "forget.classes=[4]", *auto, "unlearn_method.cache=false")
    e3 = r3["method_info"]["auto"]
    assert e3["cached_classes"] == [] and e3["table"] == e2["table"] and e3["chosen"] == e2["chosen"]


def test_iau_lr_auto_rows_are_cached_and_equal_a_recomputation(trained, tmp_path):
    auto = ["unlearn_method=iau", "unlearn_method.lr=auto", "unlearn_method.auto.classes=2"]
    auto.append("unlearn_method.auto.grid=[0.0001,0.001]")
    r1 = _unlearn(trained, tmp_path / "a", "forget.classes=[2]", *auto)["method_info"]
    r2 = _unlearn(trained, tmp_path / "b", "forget.classes=[2]", *auto)["method_info"]
    assert r1["auto"]["cached_classes"] == [] and r2["auto"]["cached_classes"] == r1["auto"]["classes"]
    assert r2["auto"]["table"] == r1["auto"]["table"] and r2["lr"] == r1["lr"] == r1["auto"]["chosen"]["value"]
