"""The methods_digits study's configs (experiments/methods_digits): every method of its sweep composes into the study's
protocol (no preset of conf/experiment, the letters-pretrained tiny ViT, 5 epochs, retention curves), and the README
table is built from the aggregate summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from experiments.methods_digits.table import table

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments" / "methods_digits"
SWEPT = yaml.safe_load((STUDY / "sweep.yaml").read_text())["hydra"]["sweeper"]["params"]["+methods_digits/method"]
FROZEN = {"coda_prompt", "l2p", "dualprompt", "simplecil", "linear_probe"}  # the backbone does not train


def _compose(method: str, sweep_first: bool = False):
    """As a job of the study's multirun composes it (Hydra puts the swept ``+methods_digits/method`` before
    ``+methods_digits=sweep``), or in the other order (``sweep_first``: as a single run typed by hand)."""
    GlobalHydra.instance().clear()
    parts = [f"+methods_digits/method={method}", "+methods_digits=sweep"]
    overrides = [f"hydra.searchpath=[file://{ROOT / 'experiments'}]", *(parts[::-1] if sweep_first else parts)]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(config_name="cl", overrides=overrides)


def test_the_sweep_holds_every_method_file():
    assert sorted(SWEPT.split(",")) == sorted(p.stem for p in (STUDY / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", SWEPT.split(","))
def test_every_method_runs_in_the_study_protocol(method):
    """In both orders of the overrides (a method file that overrode /experiment once lost to sweep.yaml's
    ``override /experiment: null`` in the multirun: CODA-Prompt's seed 0 ran as finetune)."""
    cfg = _compose(method)
    assert cfg == _compose(method, sweep_first=True)
    assert cfg.backbone._target_ == "cl.modules.prompt_pretrain.pretrained_vit"  # every method: same pretrained start
    assert cfg.trainer.max_epochs == 5 and cfg.scenario.n_experiences == 5 and cfg.data.name == "digits"
    assert "retention" in cfg.callbacks and not any(k.endswith("_reference") for k in cfg.callbacks)
    assert ("fpf" in cfg.callbacks) == (method == "fpf")
    expected = {"fpf": "er", "coda_prompt": "coda_prompt"}.get(method, method)
    assert cfg.method.name == expected
    if method in {"coda_prompt", "linear_probe", "l2p", "dualprompt"}:
        assert cfg.method.optimizer.lr == 0.01  # the prompt methods' lr for the tiny stream (experiments/coda_digits)
    elif cfg.method.optimizer is not None and method not in FROZEN:
        assert cfg.method.optimizer.lr == 0.001  # conf/method/optimizer/adam.yaml, not coda_digits' 0.01


def test_readme_table_from_the_summary(tmp_path):
    summary = tmp_path / "summary.csv"
    header = "method,methods_digits/method,n_runs,avg_acc_mean,avg_acc_std,forgetting_mean,forgetting_std,bwt_mean,"
    header += "bwt_std,seconds_mean,seconds_std,flops_mean,flops_std\n"
    summary.write_text(
        header
        + "er,fpf,3,0.9,0.01,0.05,0.02,-0.05,0.02,100,10,7e11,1e10\n"
        + "joint,joint,1,0.95,,0.02,,-0.02,,150,,9e11,\n"
    )
    lines = table(summary).splitlines()
    assert lines[2] == "| `joint` | 1 | 95.0 | 2.0 | -2.0 | 150 | 0.90 |"  # best A_T first, no std of one run
    assert lines[3] == "| `fpf` | 3 | 90.0 ± 1.0 | 5.0 ± 2.0 | -5.0 ± 2.0 | 100 ± 10 | 0.70 ± 0.01 |"
