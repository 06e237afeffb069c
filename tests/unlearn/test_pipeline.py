"""End to end on a tiny digits checkpoint trained once per module: every unlearning config runs, the reports are
complete and honest, the source checkpoint is untouched, and bad input stops before any work.

Cost (default suite): one 5-experience joint checkpoint of 2 batches per experience, shared by every test of the module;
the linear probe (an extra feature pass and a logistic regression, before and after) only runs where a test checks it
(``probe=True``); ``retrain`` (a replay of the training run) is ``slow``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import compose_config, run_cl

CONF = Path(__file__).resolve().parents[2] / "conf" / "unlearn_method"
FAST = {  # keep the training-based baselines to a few steps
    "finetune": ["unlearn_method.epochs=1"],
    "random_label": ["unlearn_method.epochs=1"],
    # the fixture is barely trained (2 batches per experience): in the reference's batch order (one-class batches,
    # large I_D) the default alpha 15 selects nothing there; alpha 1 dampens what the forget set needs more than D
    "ssd": ["unlearn_method.alpha=1"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cl_run")
    torch.manual_seed(0)
    run_cl(compose_config(["method=joint", "logger=none", "+trainer.limit_train_batches=2"], run_dir))
    return run_dir


def unlearn(ckpt: Path | str, out: Path, *overrides: str, probe: bool = False) -> dict:
    import unlearn.resolvers  # noqa: F401
    from unlearn.pipeline import run_unlearning

    ov = [f"checkpoint={ckpt}", f"eval.probe={str(probe).lower()}", *overrides]
    cfg = compose_config(ov, out, shrink=False, config_name="unlearn")
    return run_unlearning(cfg, out, ov)


def _hash(path: Path) -> str:
    from unlearn.context import file_sha256

    return file_sha256(path)


# retrain replays the whole training run: slow
NAMES = [
    pytest.param(n, marks=pytest.mark.slow) if n == "retrain" else n
    for n in sorted(p.stem for p in CONF.glob("*.yaml"))
]


@pytest.mark.parametrize("name", NAMES)
def test_every_unlearning_config_runs_and_reports(trained, tmp_path, name):
    from cl.engine.checkpoint import load_checkpoint

    ckpt = trained / "checkpoints" / "task_4.ckpt"
    before = _hash(ckpt)
    probe = name in ("ssd", "retrain")  # the probe's keys are checked once (and on the slow reference)
    r = unlearn(trained, tmp_path, f"unlearn_method={name}", "forget.classes=[3]", *FAST.get(name, []), probe=probe)
    assert _hash(ckpt) == before  # the source checkpoint is never modified
    for k in ("retain_train_acc", "retain_test_acc", "forget_train_acc", "forget_test_acc", "test_acc"):
        assert 0.0 <= r[k] <= 1.0 and 0.0 <= r[f"original_{k}"] <= 1.0
    for k in ("mia_entropy", "mia_loss", *(("probe_forget_test_acc", "probe_retain_test_acc") if probe else ())):
        assert 0.0 <= r[k] <= 1.0
    assert probe or "probe_forget_test_acc" not in r  # eval.probe=false skips it
    assert len(r["per_task_acc"]) == len(r["original_per_task_acc"]) == 5 and r["seconds"] > 0
    assert r["sizes"]["forget_train"] + r["sizes"]["retain_train"] == 1347
    assert r["forget_classes"] == [3]
    for f in ("unlearn_report.json", "unlearn_report.csv", "unlearn_report.png", "splits/forget_train.csv"):
        assert (tmp_path / f).is_file()
    out = load_checkpoint(tmp_path / "checkpoints" / "unlearned_task_4.ckpt")
    assert out["unlearning"]["method"] == name and out["unlearning"]["checkpoint_sha256"] == before
    if name in ("iau", "ssd", "gradient_ascent"):  # each moves the weights away from the original
        src = load_checkpoint(ckpt)["state_dict"]
        assert any(not torch.equal(src[k], v) for k, v in out["state_dict"].items() if v.is_floating_point())


def test_ssd_cache_pays_only_for_the_forget_set_the_second_time(trained, tmp_path):
    import shutil

    shutil.rmtree(trained / "unlearn_cache", ignore_errors=True)
    a = unlearn(trained, tmp_path / "a", "unlearn_method=ssd", "forget.classes=[1]")
    b = unlearn(trained, tmp_path / "b", "unlearn_method=ssd", "forget.classes=[1]")
    # the reference order puts the forget set last in D: another forget set is another D order, another entry
    c = unlearn(trained, tmp_path / "c", "unlearn_method=ssd", "forget.classes=[2]")
    assert not a["method_info"]["importance_cached"] and b["method_info"]["importance_cached"]
    assert (
        not c["method_info"]["importance_cached"]
        and len(list((trained / "unlearn_cache").glob("importance-*.safetensors"))) == 2
    )
    # the shuffled order of D does not depend on the forget set: one entry serves every forget set
    s1 = unlearn(trained, tmp_path / "s1", "unlearn_method=ssd", "unlearn_method.order=shuffled", "forget.classes=[1]")
    s2 = unlearn(trained, tmp_path / "s2", "unlearn_method=ssd", "unlearn_method.order=shuffled", "forget.classes=[2]")
    assert not s1["method_info"]["importance_cached"] and s2["method_info"]["importance_cached"]
    assert a["retain_test_acc"] == b["retain_test_acc"]  # the cached importance gives the same unlearned model
    assert a["method_info"]["selected_parameters"] == b["method_info"]["selected_parameters"]
    d = unlearn(
        trained, tmp_path / "d", "unlearn_method=ssd", "unlearn_method.importance=per_sample", "forget.classes=[1]"
    )
    assert not d["method_info"]["importance_cached"]  # another mode is another cache entry


def test_reference_gap_and_split_reuse(trained, tmp_path):
    ref = unlearn(trained, tmp_path / "ref", "unlearn_method=iau", "forget=random", "forget.count=40")
    r = unlearn(
        trained,
        tmp_path / "x",
        "unlearn_method=ssd",
        "forget=indices",
        f"forget.path={tmp_path / 'ref'}",
        f"reference={tmp_path / 'ref'}",
    )
    assert r["split_digest"] == ref["split_digest"] and r["forget_test_acc"] is None
    assert r["gap_to_reference_retain_test_acc"] == pytest.approx(r["retain_test_acc"] - ref["retain_test_acc"])
    from unlearn.context import UnlearnConfigError

    with pytest.raises(UnlearnConfigError, match="was run on another split"):
        unlearn(trained, tmp_path / "y", "forget.classes=[3]", f"reference={tmp_path / 'ref'}")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["forget.classes=[9]"], r"never seen by the checkpoint \(experiences 0..1\); allowed: \["),
        (["forget.classes=[]"], "forget.classes is empty"),
        (["forget=random", "forget.count=0"], "allowed: 1..541"),
        (["forget=task", "forget.experience=3"], "forget.experience=3; allowed"),
        (["forget.classes=[1,4,5,7]"], "the forget set is the whole training set"),
        (["unlearn_method=iau", "unlearn_method.optimizer=lbfgs", "forget.classes=[1]"], "optimizer='lbfgs'"),
    ],
)
def test_bad_input_stops_before_any_work(trained, tmp_path, overrides, message):
    from unlearn.context import UnlearnConfigError

    with pytest.raises(UnlearnConfigError, match=message):
        unlearn(trained / "checkpoints" / "task_1.ckpt", tmp_path, *overrides)
    assert not (tmp_path / "splits").exists() and not (tmp_path / "checkpoints").exists()


def test_foreign_or_missing_checkpoint_is_refused(tmp_path):
    from unlearn.context import UnlearnConfigError

    foreign = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UnlearnConfigError, match="is not a checkpoint written by cl.run"):
        unlearn(foreign, tmp_path / "o", "forget.classes=[1]")
    with pytest.raises(UnlearnConfigError, match="checkpoint is not set"):
        unlearn("", tmp_path / "o", "forget.classes=[1]")


@pytest.mark.slow  # one unlearning run with the probe and the attack: 25-160 s on 2 cores (load-dependent)
def test_probe_per_class_and_relearning_attack(trained, tmp_path):
    import math

    # gradient ascent: a cheap method (SSD's full-data pass would dominate the test's time)
    ov = ("unlearn_method=gradient_ascent", "unlearn_method.lr=0.1", "forget.classes=[2,3]", "eval.relearn.lr=0.1")
    r = unlearn(trained, tmp_path / "a", *ov, probe=True)
    labels = [int(ln.split(",")[2]) for ln in (tmp_path / "a/splits/forget_test.csv").read_text().splitlines()[1:]]
    per = r["probe_forget_test_acc_per_class"]
    assert set(per) == {"2", "3"} and set(r["original_probe_forget_test_acc_per_class"]) == {"2", "3"}
    weighted = sum(per[str(c)] * labels.count(c) for c in (2, 3)) / len(labels)
    assert weighted == pytest.approx(r["probe_forget_test_acc"])  # the per-class values make up the pooled one
    rel, n_forget = r["relearn"], r["sizes"]["forget_train"]
    assert rel["steps"] == [0, 1, 2, 5, 10] and rel["samples"] == math.ceil(0.1 * n_forget)
    assert rel["samples"] + rel["heldout_samples"] == n_forget
    assert rel["forget_test_acc"][0] == pytest.approx(r["forget_test_acc"])  # step 0 is the unlearned model itself
    assert r["relearn_forget_acc"] == rel["forget_test_acc"][-1] and "original_relearn_forget_acc" not in r
    assert len(set(rel["forget_test_acc"])) > 1  # the fine-tuning steps move the forget-set predictions
    assert "relearn_forget_acc" in (tmp_path / "a/unlearn_report.csv").read_text()
    assert (tmp_path / "a/unlearn_per_task.png").is_file()


def test_per_task_heatmap_rows(tmp_path):
    import numpy as np

    from unlearn.report import per_task_rows, plot_per_task

    r = {"method": "ssd", "forget": "class", "original_per_task_acc": [0.9, 0.8, 0.7], "per_task_acc": [0.1, 0.8, 0.6]}
    m = plot_per_task(r, {"method": "retrain", "per_task_acc": [0.5, 0.25]}, tmp_path / "h.png")
    assert m[0] == [0.9, 0.8, 0.7] and m[1] == [0.1, 0.8, 0.6] and m[2][:2] == [0.5, 0.25] and np.isnan(m[2][2])
    assert per_task_rows(r, None)[0] == ["original", "ssd"] and (tmp_path / "h.png").stat().st_size > 1000


def test_relearn_options_are_checked_before_any_work(trained, tmp_path):
    from unlearn.context import UnlearnConfigError

    with pytest.raises(UnlearnConfigError, match=r"eval.relearn.steps=\[5, 1\]; allowed: increasing"):
        unlearn(trained, tmp_path, "forget.classes=[1]", "eval.relearn.steps=[5,1]")
    with pytest.raises(UnlearnConfigError, match=r"eval.relearn.fraction=0.0; allowed"):
        unlearn(trained, tmp_path, "forget.classes=[1]", "eval.relearn.fraction=0.0")
    assert not (tmp_path / "splits").exists()


def test_library_call_without_hydra_writes_its_record(trained, tmp_path):
    """Studies and benchmarks compose in-process (no Hydra runtime): the run still records its config and overrides."""
    from hydra.core.hydra_config import HydraConfig

    import unlearn.resolvers  # noqa: F401
    from unlearn.pipeline import run_unlearning

    ov = [f"checkpoint={trained}", "eval.probe=false", "eval.relearn=null", "forget.classes=[1]"]
    ov.append("unlearn_method=gradient_ascent")  # the cheapest method: the record is what is checked
    cfg = compose_config(ov, tmp_path, shrink=False, config_name="unlearn")
    HydraConfig.instance().cfg = None  # as after hydra's compose API alone
    run_unlearning(cfg, tmp_path / "lib", ov)
    assert (tmp_path / "lib/.hydra/config.yaml").is_file()
    assert "forget.classes=[1]" in (tmp_path / "lib/.hydra/overrides.yaml").read_text()
