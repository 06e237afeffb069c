"""The offline default (issue 3): ``python -m cl.run`` with no argument is CODA-Prompt on the digits stream (2
class-incremental experiences of 5 classes, issue 20) with the tiny ViT pretrained on letters (committed in assets/),
compared with finetune, SimpleCIL and a linear probe on the same stream (experiments/coda_digits/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.helpers import CONF_DIR, compose_config, run_cl

REPO = CONF_DIR.parent


def _compose_cli(*overrides: str):
    """The config ``python -m cl.run [overrides]`` composes (no test shrinking, no ``~experiment``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="cl", overrides=list(overrides))


def test_default_is_coda_prompt_on_digits_with_the_tiny_letters_vit(monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(REPO))
    cfg = _compose_cli()
    assert cfg.method._target_ == "cl.methods.coda_prompt.CodaPrompt" and cfg.method.name == "coda_prompt"
    assert cfg.data.name == "digits" and cfg.scenario.n_experiences == 2
    assert cfg.backbone._target_ == "cl.modules.prompt_pretrain.pretrained_vit"
    assert (cfg.backbone.img_size, cfg.backbone.patch_size, cfg.backbone.embed_dim, cfg.backbone.depth) == (
        16,
        4,
        96,
        4,
    )
    weights = Path(cfg.backbone.weights)
    assert weights.is_file(), f"the default backbone weights are not committed: {weights}"
    assert weights.parent == REPO / "assets"
    assert cfg.callbacks.finetune_reference.method.name == "finetune"
    assert cfg.callbacks.simplecil_reference.method.name == "simplecil"
    lp = cfg.callbacks.linear_probe_reference.method
    assert lp.name == "linear_probe" and lp.optimizer.lr == cfg.method.optimizer.lr  # CODA's head training, no prompt
    assert lp.mask_past_in_training and cfg.method.mask_past_in_training
    # `~experiment` (experiment=null) is the plain base config; the tests' helper composes that by default
    plain = _compose_cli("~experiment")
    assert plain.method.name == "finetune" and plain.backbone._target_ == "cl.backbones.Backbone"
    assert "finetune_reference" not in plain.callbacks
    assert compose_config([], REPO / "unused").method.name == "finetune"


def test_default_weights_load_into_the_tiny_vit(monkeypatch):
    """The committed file is a state dict of exactly the default backbone (nothing is pretrained on first use)."""
    import torch
    from hydra.utils import instantiate

    monkeypatch.setenv("PROJECT_ROOT", str(REPO))
    cfg = _compose_cli()
    state = torch.load(cfg.backbone.weights, map_location="cpu", weights_only=True)
    backbone = instantiate(cfg.backbone)
    loaded = backbone.model.state_dict()
    assert set(state) == set(loaded)
    for k, v in state.items():
        assert torch.equal(v.float(), loaded[k].float()), k
    assert any(v.abs().sum() > 0 for k, v in state.items() if k.startswith("blocks."))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_run_is_level_with_simplecil_and_beats_finetune(tmp_path, monkeypatch):
    """The default run, end to end (a few minutes), meets the level its preset documents (seed 0: CODA-Prompt A_T
    82.1 %, SimpleCIL 79.6 %, linear probe 77.5 %, finetune 50.0 %; experiments/coda_digits/README.md): CODA-Prompt
    at least level with the training-free SimpleCIL on the same frozen backbone, above its own head without prompts,
    well above finetune with much lower forgetting."""
    monkeypatch.setenv("PROJECT_ROOT", str(REPO))
    cfg = compose_config(["experiment=coda_digits"], tmp_path / "run", shrink=False)
    cfg.trainer.enable_progress_bar = False
    metrics = run_cl(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["method"] == "coda_prompt" and saved["complete"] and len(saved["acc_matrix"]) == 2
    assert metrics["avg_acc"] == pytest.approx(saved["avg_acc"])
    refs = {}
    for name in ("finetune", "simplecil", "linear_probe"):
        refs[name] = json.loads((tmp_path / "run" / f"reference_{name}" / "metrics.json").read_text())
        assert refs[name]["method"] == name and refs[name]["complete"]
        assert saved["reference"][name]["avg_acc"] == pytest.approx(refs[name]["avg_acc"])
    acc = {name: r["avg_acc"] for name, r in refs.items()}
    assert saved["avg_acc"] >= acc["simplecil"], (saved["avg_acc"], acc)
    assert saved["avg_acc"] >= acc["linear_probe"], (saved["avg_acc"], acc)
    assert saved["avg_acc"] >= acc["finetune"] + 0.15, (saved["avg_acc"], acc)
    assert saved["forgetting"] <= refs["finetune"]["forgetting"] - 0.2, (saved["forgetting"], refs["finetune"])
