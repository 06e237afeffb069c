"""``retrain`` replays the training recipe without the callbacks that only measure a run (methods/retrain.py)."""

from __future__ import annotations

from omegaconf import OmegaConf

from unlearn.methods.retrain import MEASUREMENT_CALLBACKS, Retrain, recipe_config


def test_recipe_config_drops_only_the_measurement_callbacks():
    cfg = OmegaConf.create(
        {
            "seed": 3,
            "callbacks": {
                "flops": {"_target_": "cl.callbacks.flops.FlopCounter", "enabled": True},
                "finetune_reference": {"_target_": "cl.modules.prompt_reference.ReferenceRun", "subdir": "r"},
                "fpf": {"_target_": "cl.callbacks.fpf.FPFCallback", "epochs": 2},
                "off": None,
            },
        }
    )
    out = recipe_config(cfg, MEASUREMENT_CALLBACKS)
    assert sorted(out.callbacks) == ["fpf", "off"]
    assert out.callbacks.fpf.epochs == 2 and out.seed == 3
    assert sorted(cfg.callbacks) == ["finetune_reference", "flops", "fpf", "off"]  # the source config is untouched


def test_recipe_config_without_callbacks_and_configurable_skip_list():
    assert dict(recipe_config(OmegaConf.create({"seed": 0}), MEASUREMENT_CALLBACKS).callbacks) == {}
    cfg = OmegaConf.create({"callbacks": {"flops": {"_target_": "cl.callbacks.flops.FlopCounter"}}})
    assert sorted(recipe_config(cfg, []).callbacks) == ["flops"]
    assert Retrain(skip_callbacks=["a.B"]).skip_callbacks == ["a.B"]


def test_recipe_config_replaces_a_removed_trainer_and_keeps_its_settings():
    """A checkpoint trained with the removed lean loop is retrained with Lightning's Trainer, same settings."""
    import lightning.pytorch as pl

    from cl.engine.trainer import build

    lean = {"_target_": "cl.engine.lean.LeanTrainer", "accelerator": "cpu", "devices": 1, "max_epochs": 3}
    out = recipe_config(OmegaConf.create({"trainer": lean}), [])
    assert dict(out.trainer) == {**lean, "_target_": "lightning.pytorch.Trainer"}
    trainer = build(out.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer, pl.Trainer) and trainer.max_epochs == 3
    kept = recipe_config(OmegaConf.create({"trainer": {"_target_": "x.Y", "max_epochs": 1}}), [])
    assert kept.trainer._target_ == "x.Y"
