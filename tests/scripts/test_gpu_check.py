"""scripts/gpu_check.py (``make gpu-check``) on a machine without a GPU: it says so and skips cleanly; its runner
reports ok / FAIL / TIMEOUT / budget skips; its cl.run steps compose with the real configs; it fits 8 minutes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scripts import gpu_check
from tests.helpers import compose_config


def test_without_a_gpu_every_step_is_skipped_and_said_so(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(gpu_check, "cuda_devices", lambda: 0)
    monkeypatch.setattr(gpu_check, "run_steps", lambda *a: pytest.fail("a step ran without a GPU"))
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out
    assert out.count("skipped (no CUDA device)") == len(gpu_check.steps(tmp_path, 0))
    assert gpu_check.main(["--out", str(tmp_path), "--require-gpu"]) == 2


def test_steps_fit_the_budget_and_cover_gpu_tests_benchmarks_and_trainers(tmp_path) -> None:
    plan = gpu_check.steps(tmp_path, 1)
    assert sum(s.limit_s for s in plan) <= gpu_check.BUDGET_S == 480
    commands = [" ".join(s.cmd) for s in plan]
    assert any("pytest -m gpu" in c for c in commands)
    assert any(c.endswith("test_every_method_config.py") for c in commands)  # every method on the GPU
    assert any("bench/fisher.py" in c and "--device cuda" in c for c in commands)
    assert any("prompt_step" in c and "--device cuda" in c for c in commands)
    assert any("gated_attention" in c and "--device cuda" in c for c in commands)
    for needed in ("trainer=gpu", "trainer.precision=bf16-mixed", "trainer=ddp"):
        assert any(needed in c for c in commands), needed


def test_cl_run_steps_compose_with_the_real_configs(tmp_path) -> None:
    for step in gpu_check.steps(tmp_path, 2):
        if step.cmd[1:3] != ["-m", "cl.run"]:
            continue
        overrides = [a for a in step.cmd[3:] if not a.startswith("hydra.")]
        cfg = compose_config(overrides, tmp_path / "run", shrink=False)
        assert cfg.trainer.accelerator == "gpu", step.name
        if "ddp" in step.name:
            assert cfg.trainer.devices == 2 and cfg.method._target_ == "cl.methods.ewc.EWC"


def test_runner_reports_ok_fail_timeout_and_budget(tmp_path) -> None:
    py = sys.executable
    plan = [
        gpu_check.Step("passes", [py, "-c", "print('fine')"], 20),
        gpu_check.Step("fails", [py, "-c", "import sys; print('boom'); sys.exit(3)"], 20),
        gpu_check.Step("hangs", [py, "-c", "import time; time.sleep(30)"], 1),
        gpu_check.Step("no file", [py, "-c", "pass"], 20, expect="missing/metrics.json"),
        gpu_check.Step("too long", [py, "-c", "pass"], 10_000),
    ]
    results = {r.name: r for r in gpu_check.run_steps(plan, tmp_path, budget_s=300)}
    assert results["passes"].status == "ok" and results["passes"].note == "fine"
    assert results["fails"].status == "FAIL" and "exit 3: boom" in results["fails"].note
    assert results["hangs"].status == "TIMEOUT" and results["hangs"].seconds < 10
    assert results["no file"].status == "FAIL"
    assert results["too long"].status == "skipped (budget spent)"
    assert len(list(Path(tmp_path).glob("*.log"))) == 4
    text = gpu_check.table(list(results.values()), "header")
    assert text.splitlines()[0] == "header" and "TIMEOUT" in text


def test_only_reruns_the_named_steps_and_rejects_unknown_prefixes(monkeypatch, tmp_path) -> None:
    ran: list[str] = []
    monkeypatch.setattr(gpu_check, "cuda_devices", lambda: 1)
    monkeypatch.setattr(gpu_check, "run_steps", lambda plan, *a: ran.extend(s.name for s in plan) or [])
    monkeypatch.setattr(gpu_check, "table", lambda *a: "")
    assert gpu_check.main(["--out", str(tmp_path), "--only", "pytest", "bench gated"]) == 0
    assert ran == [
        "pytest -m gpu (kernels, methods' GPU cases)",
        "pytest -m gpu (every method, 2 experiences)",
        "pytest -m gpu (unlearning: finetune, relearn, SSD)",
        "bench gated_attention --device cuda",
    ]
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path), "--only", "nothing"])
