"""RegLoRA presets: the ViT-B/16 ones follow the CODA-Prompt protocol of their prompt counterparts and stop on missing
data; on ViT-B/16 the default targets are the 48 linear layers of the 12 blocks; the offline digits preset trains."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from cl.experiment import ConfigurationError, build
from cl.modules.lora import linear_targets


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet_r"])
def test_vit_b_presets_match_the_coda_protocol_and_stop_on_missing_data(make_cfg, tmp_path, dataset):
    cfg = make_cfg(f"experiment=reglora_{dataset}", f"paths.data_dir={tmp_path / 'no_data'}", shrink=False)
    coda = make_cfg(f"experiment=coda_{dataset}", shrink=False)
    same = ("data.name", "data.batch_size", "data.image_size", "trainer.max_epochs", "backbone.name")
    same += ("backbone.weights", "scenario.n_experiences", "scenario.class_order_rule", "scenario.class_order_seed")
    for key in same:
        group, name = key.split(".")
        assert cfg[group][name] == coda[group][name], key
    assert cfg.method.optimizer.lr == coda.method.optimizer.lr and cfg.method.mask_past_in_training
    assert cfg.method.top_percent == 2.0 and cfg.method.reg_weight == 2.5e3 and cfg.trainer.precision == "bf16-mixed"
    with pytest.raises(ConfigurationError, match="no_data"):
        build(cfg)


def test_default_targets_on_vit_b16_are_the_48_block_linears(make_cfg):
    cfg = make_cfg("experiment=reglora_cifar100", "backbone.pretrained=false", shrink=False)
    backbone = instantiate(cfg.backbone)
    targets = linear_targets(backbone.model, list(cfg.method.target_modules))
    assert (
        len(targets) == 48
        and targets["blocks.0.attn.qkv"] == (2304, 768)
        and targets["blocks.11.mlp.fc2"] == (768, 3072)
    )


@pytest.mark.parametrize("method", ["reglora", "lora"])
def test_digits_preset_trains_two_experiences_and_resumes_the_positions(make_cfg, tmp_path, method):
    from cl.engine.checkpoint import load_checkpoint, load_method_state
    from cl.engine.loop import StreamRunner

    # 3 batches per experience here: lr 0.01 so that they learn something
    overrides = ["callbacks.flops=null", "logger=none", "method.optimizer.lr=0.01"]
    cfg = make_cfg("experiment=reglora_digits", f"method={method}", *overrides)
    stream, model = build(cfg)
    runner = StreamRunner(cfg, model, stream, tmp_path / "run")
    runner.run_experience(0)
    runner.run_experience(1)
    assert runner.R[1, 1] > 0.5 and int(model.keys.filled) == 2
    _, fresh = build(cfg)
    load_method_state(fresh, load_checkpoint(tmp_path / "run" / "checkpoints" / "task_1.ckpt")["state_dict"], "t1")
    assert fresh.keys.positions.dtype.itemsize == 4
    for name in fresh.targets:
        assert fresh.keys.cumulative(name).tolist() == model.keys.cumulative(name).tolist()
