"""Every prompt YAML composes; the prompt methods train one experience; bad input stops before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cl.engine.loop import StreamRunner
from cl.experiment import ConfigurationError, build

CONF = Path(__file__).resolve().parents[2] / "conf"
PRESETS = sorted(
    p.stem for pat in ("coda_*.yaml", "l2p_*.yaml", "dualprompt_*.yaml") for p in (CONF / "experiment").glob(pat)
)
TINY = ["callbacks.flops=null", "logger=none", "+trainer.limit_train_batches=2"]


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "coda_digits"])
def test_paper_presets_compose_and_stop_on_missing_data(make_cfg, tmp_path, preset):
    cfg = make_cfg(f"experiment={preset}", f"paths.data_dir={tmp_path / 'no_data'}", shrink=False)
    assert cfg.backbone.img_size == 224 and cfg.data.batch_size == 128
    assert cfg.method.optimizer.lr == 0.001
    if preset.startswith("coda_"):
        assert cfg.method.pool_size == 100 and cfg.method.prompt_length == 8
        assert list(cfg.method.prompt_layers) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigurationError, match="no_data"):
        build(cfg)


def test_offline_default_preset_composes(make_cfg):
    cfg = make_cfg("experiment=coda_digits")
    assert cfg.method._target_ == "cl.methods.coda_prompt.CodaPrompt"
    assert cfg.backbone._target_ == "cl.modules.prompt_pretrain.pretrained_vit"
    assert cfg.callbacks.finetune_reference.method.name == "finetune"


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=coda_prompt"],
        ["method=coda_prompt", "method.ortho_weight=0.1"],
        ["method=coda_prompt", "method.insertion=tokens"],
        ["method=l2p", "method.prompt_layers=[0,1,2,3]"],
        ["method=dualprompt"],
    ],
    ids=["coda", "coda_ortho0.1", "coda_tokens", "deep_l2p", "dualprompt"],
)
def test_prompt_methods_train_one_experience(make_cfg, tmp_path, overrides):
    cfg = make_cfg(*overrides, *TINY)
    stream, method = build(cfg)
    backbone_before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    prompt_before = {k: v.clone() for k, v in method.state_dict().items() if k.startswith(("prompt.", "g_prompt."))}
    StreamRunner(cfg, method, stream, tmp_path / "run").run_experience(0)
    for k, v in method.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), f"frozen backbone changed: {k}"
    changed = [k for k, v in prompt_before.items() if not torch.equal(method.state_dict()[k], v)]
    assert changed, "no prompt parameter was trained"


def test_coda_pool_not_dividing_the_experiences_stops_before_training(make_cfg):
    cfg = make_cfg("method=coda_prompt", "method.pool_size=15", "scenario.n_experiences=2", *TINY)
    with pytest.raises(ConfigurationError, match=r"method.pool_size=15.*scenario.n_experiences=2"):
        build(cfg)


def test_prompt_method_rejects_a_non_vit_backbone_and_bad_layers(make_cfg):
    with pytest.raises(ConfigurationError, match="needs a ViT backbone"):
        build(make_cfg("method=coda_prompt", "backbone=resnet18_reduced", *TINY))
    with pytest.raises(ConfigurationError, match="prompt layers"):
        build(make_cfg("method=coda_prompt", "method.prompt_layers=[0,7]", *TINY))


def test_training_masks_past_classes_so_their_head_rows_get_no_gradient(make_cfg):
    cfg = make_cfg("method=coda_prompt", *TINY)
    stream, method = build(cfg)
    method.on_experience_start(stream.experiences[0])
    method.on_experience_start(stream.experiences[1])
    past = stream.experiences[0].classes
    current = stream.experiences[1].classes
    assert method.train_logit_mask().nonzero().flatten().tolist() == sorted(current)
    x = torch.stack([stream.experiences[1].train[i][0] for i in range(4)])
    y = torch.tensor([stream.experiences[1].train[i][1] for i in range(4)])
    method.compute_loss(x, y, (x, y)).backward()
    assert torch.all(method.head.weight.grad[past] == 0)
    assert method.head.weight.grad[current].abs().sum() > 0
