"""The kfpf_paper study's configs compose into the FPF paper's setting for every recipe x method."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[2]


def _compose(recipe: str, method: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(
            config_name="cl",
            overrides=[
                "~experiment",
                f"hydra.searchpath=[file://{ROOT / 'experiments'}]",
                "+kfpf_paper=sweep",
                f"+kfpf_paper/recipe={recipe}",
                f"+kfpf_paper/method={method}",
            ],
        )


@pytest.mark.parametrize("recipe", ["digits", "seq_cifar10"])
@pytest.mark.parametrize("method", ["er", "er_fpf", "k_fpf", "k_fpf_kd"])
def test_every_study_run_is_in_the_papers_setting(recipe, method):
    cfg = _compose(recipe, method)
    assert cfg.backbone.name == "resnet18" and cfg.backbone.cifar_stem and not cfg.backbone.pretrained
    assert cfg.scenario.name == "class" and cfg.method.buffer_size == 500
    assert ("fpf" in cfg.callbacks) == (method == "er_fpf")
    if method.startswith("k_fpf"):
        assert cfg.method.modules == "default" and cfg.method.kd == (method == "k_fpf_kd")
        assert cfg.method.k == {"digits": 6, "seq_cifar10": 20}[recipe]
    if recipe == "seq_cifar10":
        assert cfg.method.optimizer._target_ == "torch.optim.SGD" and cfg.method.optimizer.lr == 0.1
