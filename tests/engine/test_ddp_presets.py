"""Every callback and preset family runs under ``trainer=ddp_cpu`` (issue 18, item 10): the offline default
(CODA-Prompt with its reference-run callbacks, nested streams run on every rank), replay (ER with the
sensitivity callback), the FPF callback and k-FPF (its step plan uses the global batch), and one preset per later
method family: GCAB-CFDC (HAT masks, CFDC teacher), RegLoRA (peft LoRA, regularisation masks), CoMEL/OWLoRA (MIL bags,
one bag per rank), SimpleCIL (prototypes after training: equal to one process's) and the linear probe. EWC, LwF,
DER++ and finetune are compared with one process in tests/engine/test_ddp_gloo.py. Each case is two gloo processes on a
shrunk stream (2 experiences, 2 global batches): minutes on a loaded 2-core machine, hence ``slow``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_env

SHRUNK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false",
    "scenario.n_experiences=2",
    "logger=none",
    "data.batch_size=32",
]


def _ddp_run(preset: list[str], run_dir: Path, trainer: str = "ddp_cpu") -> subprocess.CompletedProcess[str]:
    shrunk = [a for a in SHRUNK if not any(a.split("=")[0] == p.split("=")[0] for p in preset)]
    if "experiment=comel_digit_bags" in preset:  # the MIL scenario: one experience per task (data.source.n_tasks)
        shrunk.remove("scenario.n_experiences=2")
    cmd = [sys.executable, "-m", "cl.run", f"hydra.run.dir={run_dir}", *preset, f"trainer={trainer}", *shrunk]
    return subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(1000)
@pytest.mark.parametrize(
    "preset",
    [[], ["experiment=er_digits"], ["experiment=fpf_digits"], ["experiment=kfpf_digits", "method.k=2"]],
    ids=["default-coda-with-reference", "er-sensitivity", "fpf-callback", "k-fpf"],
)
def test_preset_runs_under_two_gloo_processes(tmp_path, preset):
    run_dir = tmp_path / "run"
    res = _ddp_run(preset, run_dir)
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True and len(metrics["acc_matrix"]) == 2
    if not preset:  # the reference runs ran on both ranks and their results reached the main record
        assert set(metrics["reference"]) == {"finetune", "simplecil", "linear_probe"}
        refs = sorted(run_dir.glob("reference*/metrics.json"))  # the preset's callbacks.*_reference.subdir
        assert len(refs) == 3 and all(json.loads(r.read_text())["complete"] is True for r in refs)
    if preset and preset[0] == "experiment=kfpf_digits":
        assert metrics["fpf_triggers"] == 2 and metrics["total_steps"] == 4  # 2 experiences x 2 global batches


MIL = ["experiment=comel_digit_bags", "data.source.n_tasks=2", "data.batch_size=2"]  # one bag per rank
FAMILIES = {
    "gcab": ["experiment=gcab_digits"],
    "reglora": ["experiment=reglora_digits"],
    "comel-owlora": MIL,
    "simplecil": ["method=simplecil", "backbone=vit_tiny_letters"],
    "linear-probe": ["method=linear_probe", "backbone=vit_tiny_letters"],
}


@pytest.mark.slow
@pytest.mark.timeout(1000)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_method_family_runs_under_two_gloo_processes(tmp_path, family):
    """Issue 18, item 9: one preset per method family added after the first DDP tests."""
    preset = FAMILIES[family]
    run_dir = tmp_path / "run"
    res = _ddp_run(preset, run_dir)
    assert res.returncode == 0, res.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True and len(metrics["acc_matrix"]) == 2
    assert metrics["acc_matrix"][0][0] > 0.0
    if family == "simplecil":  # prototypes come from the whole training set on every rank: one process's result
        one = _ddp_run(preset, tmp_path / "one", trainer="cpu")
        assert one.returncode == 0, one.stderr[-4000:]
        assert json.loads((tmp_path / "one" / "metrics.json").read_text())["acc_matrix"] == metrics["acc_matrix"]
