"""Unlearning on one CUDA device (``trainer=gpu``): the training baselines fit with Lightning's Trainer on the GPU and
the model comes back to the run's device for evaluation (Lightning's teardown moves it to the CPU), the relearning
attack and SSD's importances run there too, and the result matches the CPU run of the same recipe. Part of
``make gpu-check``; skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

from tests.unlearn.test_pipeline import trained, unlearn  # noqa: F401 (the module's checkpoint fixture)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_finetune_and_relearning_on_a_gpu_match_the_cpu_run(trained, tmp_path):  # noqa: F811
    from cl.engine.checkpoint import load_checkpoint

    common = ["unlearn_method=finetune", "unlearn_method.epochs=1", "forget.classes=[3]"]
    gpu = unlearn(trained, tmp_path / "gpu", "trainer=gpu", *common)
    cpu = unlearn(trained, tmp_path / "cpu", *common)
    out = load_checkpoint(tmp_path / "gpu" / "checkpoints" / "unlearned_task_4.ckpt")["state_dict"]
    src = load_checkpoint(trained / "checkpoints" / "task_4.ckpt")["state_dict"]
    assert any(not torch.equal(src[k], v) for k, v in out.items() if v.is_floating_point()), "nothing trained"
    for k in ("forget_test_acc", "retain_test_acc", "test_acc"):
        assert abs(gpu[k] - cpu[k]) <= 0.05, (k, gpu[k], cpu[k])  # same recipe; float order differs on the GPU
    assert gpu["original_test_acc"] == pytest.approx(cpu["original_test_acc"], abs=0.01)
    assert len(gpu["relearn"]["forget_test_acc"]) == len(gpu["relearn"]["steps"]) > 1  # the attack ran on the GPU


def test_ssd_on_a_gpu_dampens_weights(trained, tmp_path):  # noqa: F811
    r = unlearn(
        trained,
        tmp_path,
        "trainer=gpu",
        "unlearn_method=ssd",
        "unlearn_method.alpha=1",
        "forget.classes=[3]",
        "eval.relearn=null",
    )
    assert r["forget_test_acc"] <= r["original_forget_test_acc"]
