"""The engine's per-experience Lightning ``Trainer`` (cl/engine/trainer.py): built from every conf/trainer config as
Hydra would build it, the step-loss log next to a method's own ``self.log``, the experience's progress bar."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import compose_config

SETTINGS = ("max_epochs", "log_every_n_steps", "limit_train_batches", "gradient_clip_val", "num_devices")


def _tiny(log: bool = False) -> Any:
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def training_step(self, batch, batch_idx):
            if log:  # a method's own metric through Lightning's logging
                self.log("train/weight_norm", self.lin.weight.norm())
            return self.lin(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Tiny()


def _loader(n: int = 24) -> Any:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(n, 4)), batch_size=8)


@pytest.mark.parametrize("name", ["cpu", "lightning", "ddp_cpu"])
def test_make_trainer_builds_what_hydra_instantiate_builds(name, tmp_path):
    """make_trainer calls the target with the config's values (no Hydra merge and copy per experience): the Trainer
    has the settings Hydra's instantiate gives it, and the nested strategy node is instantiated."""
    import lightning as L
    from hydra.utils import instantiate

    from cl.engine.trainer import make_trainer

    cfg = compose_config([f"trainer={name}", "logger=none", "trainer.gradient_clip_val=0.5"], tmp_path)
    ours = make_trainer(cfg.trainer, None, tmp_path, 0, 5)
    ref = instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path), use_distributed_sampler=False)
    assert type(ours) is L.Trainer
    for key in SETTINGS:
        assert getattr(ours, key) == getattr(ref, key), key
    assert type(ours.strategy) is type(ref.strategy) and type(ours.precision_plugin) is type(ref.precision_plugin)
    assert ours._accelerator_connector.use_distributed_sampler is False  # the engine shards (identical order)


def test_trainer_lightning_is_an_alias_of_cpu(tmp_path):
    assert compose_config(["trainer=lightning"], tmp_path).trainer == compose_config(["trainer=cpu"], tmp_path).trainer


def test_step_loss_rows_and_a_method_self_log_share_the_step_numbering(tmp_path):
    """train/loss comes from the step's output (StepLossLogger), a method's self.log from Lightning's logging: both
    reach the experience's metrics.csv with the same step numbers (0-based steps taken) and epochs."""
    from cl.engine.trainer import make_trainer

    cfg = compose_config(["logger=csv", "trainer.max_epochs=2"], tmp_path)
    make_trainer(cfg.trainer, cfg.logger, tmp_path, 1, 5).fit(_tiny(log=True), train_dataloaders=_loader())
    with open(tmp_path / "logs" / "exp_1" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    loss = {(r["step"], r["epoch"]) for r in rows if r["train/loss"]}
    norm = {(r["step"], r["epoch"]) for r in rows if r["train/weight_norm"]}
    assert loss == norm == {(str(s), str(s // 3)) for s in range(6)}  # 2 epochs of 3 batches


def test_progress_bar_names_the_experience(tmp_path, capsys):
    from cl.engine.trainer import make_trainer

    overrides = ["logger=none", "trainer.max_epochs=2", "trainer.enable_progress_bar=true"]
    cfg = compose_config([*overrides, "trainer.limit_train_batches=null"], tmp_path)
    make_trainer(cfg.trainer, None, Path(tmp_path), 1, 5).fit(_tiny(), train_dataloaders=_loader(32))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "exp 2/5 · epoch 0" in text and "exp 2/5 · epoch 1" in text and "4/4" in text and "train/loss" in text
    assert "GPU available" not in text  # Lightning's per-Trainer notices are not repeated at every experience
