"""The offline default (issue 3): ``python -m cl.run`` with no argument is CODA-Prompt on the digits stream with the
tiny ViT pretrained on letters (committed in assets/), compared with finetune on the same stream."""

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
    assert cfg.data.name == "digits" and cfg.scenario.n_experiences == 5
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
def test_default_run_beats_finetune(tmp_path, monkeypatch):
    """The default run, end to end (a few minutes): CODA-Prompt's A_T is well above finetune's, its forgetting lower."""
    monkeypatch.setenv("PROJECT_ROOT", str(REPO))
    cfg = compose_config(["experiment=coda_digits"], tmp_path / "run", shrink=False)
    cfg.trainer.enable_progress_bar = False
    metrics = run_cl(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ref = json.loads((tmp_path / "run" / "reference_finetune" / "metrics.json").read_text())
    assert saved["method"] == "coda_prompt" and ref["method"] == "finetune" and saved["complete"]
    assert saved["reference"]["finetune"]["avg_acc"] == pytest.approx(ref["avg_acc"])
    assert metrics["avg_acc"] == pytest.approx(saved["avg_acc"])
    assert saved["avg_acc"] >= ref["avg_acc"] + 0.15, (saved["avg_acc"], ref["avg_acc"])
    assert saved["forgetting"] <= ref["forgetting"] - 0.2, (saved["forgetting"], ref["forgetting"])
