"""The engine's lean loop (cl/engine/lean.py) trains exactly as Lightning's Trainer: same weights, optimizer state,
FLOP counts and CSV step log; bad settings fail before training; SIGTERM, the progress bar and carried FLOP counts."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cl.engine.checkpoint import load_checkpoint
from tests.helpers import compose_config, run_cl

LEAN = "cl.engine.lean.LeanTrainer"
LIGHTNING = "lightning.pytorch.Trainer"


def _run(overrides: list[str], run_dir: Path, target: str) -> tuple[dict[str, Any], dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = run_cl(compose_config([*overrides, f"trainer._target_={target}"], run_dir))
    finally:
        torch.set_num_threads(threads)
    return metrics, load_checkpoint(run_dir / "checkpoints" / "task_4.ckpt")


def _rows(run_dir: Path, t: int) -> list[dict[str, str]]:
    with open(run_dir / "logs" / f"exp_{t}" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "overrides",
    [
        # a partial last batch (digits' experiences are not multiples of 32), hooks of ER (on_train_batch_end)
        ["method=er", "backbone=cnn_small", "trainer.limit_train_batches=null"],
        # k-FPF reads trainer.max_epochs / num_training_batches / train_dataloader in on_train_start; triggers
        ["method=k_fpf", "method.k=3", "method.fpf_iterations=2"],
        # a prompt method: epoch-interval cosine scheduler, 2 epochs, train/prompt_loss in the step log
        ["method=l2p", "backbone.depth=2", "trainer.max_epochs=2", "+trainer.limit_train_batches=2"],
    ],
    ids=["er", "k_fpf", "l2p"],
)
def test_lean_loop_trains_exactly_as_lightning(overrides, tmp_path):
    m_lean, ck_lean = _run(overrides, tmp_path / "lean", LEAN)
    m_pl, ck_pl = _run(overrides, tmp_path / "pl", LIGHTNING)
    for k, v in ck_pl["state_dict"].items():
        assert torch.equal(ck_lean["state_dict"][k], v), k
    opt_pl, opt_lean = ck_pl["optimizer"], ck_lean["optimizer"]
    assert opt_lean["param_groups"] == opt_pl["param_groups"]  # includes the scheduler's learning rate
    for i, state in opt_pl["state"].items():
        assert all(torch.equal(opt_lean["state"][i][k], v) for k, v in state.items())
    for key in ("acc_matrix", "flops", "flops_fit", "param_updates", "params_updated", "flops_untraced_steps"):
        assert m_lean[key] == m_pl[key], key
    assert m_lean["flops"] > 0
    for t in (0, 4):
        assert _rows(tmp_path / "lean", t) == _rows(tmp_path / "pl", t)
    if "method=l2p" in overrides:
        assert float(_rows(tmp_path / "lean", 4)[0]["train/prompt_loss"]) != 0.0


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("devices", 2, r"trainer.devices=2 is not supported by the lean loop; allowed: 1"),
        ("precision", "16-mixed", r"trainer.precision='16-mixed' .*allowed: \['32-true', '32', 'bf16-mixed'\]"),
        ("accumulate_grad_batches", 2, r"trainer.accumulate_grad_batches=2 .*trainer=lightning"),
    ],
)
def test_unsupported_settings_name_the_key(key, value, match, tmp_path):
    from cl.experiment import ConfigurationError

    cfg = compose_config([f"trainer._target_={LEAN}", f"++trainer.{key}={value}"], tmp_path)
    with pytest.raises(ConfigurationError, match=match):
        run_cl(cfg)
    assert not (tmp_path / "checkpoints").exists()  # refused before training


def _tiny_module(flag: bool = True) -> Any:
    import lightning as L

    class Tiny(L.LightningModule):
        step_flops_stream_invariant = flag

        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def training_step(self, batch, batch_idx):
            return self.lin(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Tiny()


def _loader(n: int = 32) -> Any:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(n, 4)), batch_size=8)


class _SigtermAt(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_after_the_step_and_chains_the_previous_handler():
    from cl.engine.lean import LeanTrainer

    seen = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        trainer = LeanTrainer(max_epochs=1, enable_progress_bar=False, callbacks=[_SigtermAt()])
        with pytest.raises(SIGTERMException):
            trainer.fit(_tiny_module(), train_dataloaders=_loader())
        assert trainer.received_sigterm and seen == [signal.SIGTERM] and trainer.global_step == 2
        assert signal.getsignal(signal.SIGTERM) is not None and seen  # the pre-fit handler is back
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_progress_bar_names_the_experience(capsys):
    from cl.engine.lean import LeanTrainer

    LeanTrainer(max_epochs=2, progress_label="exp 2/5").fit(_tiny_module(), train_dataloaders=_loader())
    out = capsys.readouterr().out
    assert "exp 2/5 · epoch 0" in out and "exp 2/5 · epoch 1" in out and "4/4" in out and "train/loss" in out


@pytest.mark.parametrize("invariant, traced", [(True, 1), (False, 2)])
def test_flop_counts_carry_over_fits_only_when_declared(invariant, traced):
    from cl.callbacks.flops import FlopCounter
    from cl.engine.lean import LeanTrainer

    totals = {}
    for mode in ("full", "cached"):
        counter, module = FlopCounter(mode=mode), _tiny_module(invariant)
        for _ in range(2):  # two experiences: two fits of the same module, callbacks kept
            LeanTrainer(max_epochs=1, enable_progress_bar=False, callbacks=[counter]).fit(module, _loader())
        totals[mode] = counter.report_metrics()["flops_fit"]
        if mode == "cached":
            assert counter.traced_steps == traced and counter.untraced_steps == 0
    one_matmul = 2 * 8 * 4 * 3  # a forward of lin on a batch of 8, or its weight gradient
    assert totals["cached"] == totals["full"] == 8 * 2 * one_matmul  # 2 fits x 4 steps
