"""logger=wandb (offline, no account) and logger=mlflow (a local file store), through a real cl.run run: one tracker
run per cl.run run, steps continuing across experiences, and the config, summary and matrix picture at the end."""

from __future__ import annotations

import pytest

from tests.helpers import compose_config, run_cl


def test_mlflow_logs_every_experience_into_one_run_then_config_summary_and_picture(tmp_path) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    store = tmp_path / "mlruns"
    run_dir = tmp_path / "run"
    cfg = compose_config(["logger=mlflow", f"logger.tracking_uri={store}", "scenario.n_experiences=2"], run_dir)
    metrics = run_cl(cfg)
    client = MlflowClient(store.resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("continual-learning").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert (run_dir / "logs" / "mlflow_run_id").read_text().strip() == run.info.run_id
    assert run.info.status == "FINISHED"
    steps = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    experiences = sorted(client.get_metric_history(run.info.run_id, "experience"), key=lambda m: m.step)
    assert len(steps) == 6 and sorted(s for s, _ in steps) == list(range(6))  # 3 steps x 2 experiences, no rewind
    assert [m.value for m in experiences] == [0, 0, 0, 1, 1, 1]
    assert run.data.params["method._target_"] == "cl.methods.finetune.Finetune"
    assert run.data.params["seed"] == "0"
    assert run.data.metrics["final/avg_acc"] == pytest.approx(metrics["avg_acc"])
    assert run.data.metrics["final/forgetting"] == pytest.approx(metrics["forgetting"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"acc_matrix.png", "metrics.json"} <= artifacts


def test_wandb_offline_logs_one_run_with_config_summary_and_picture(tmp_path, monkeypatch) -> None:
    """Offline W&B keeps its records in a binary file: what reaches the SDK is recorded at its public methods."""
    wandb = pytest.importorskip("wandb")
    from wandb.sdk import wandb_config, wandb_run, wandb_summary

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network
    logged, summaries, configs = [], [], []
    log, summary_update, config_update = wandb_run.Run.log, wandb_summary.Summary.update, wandb_config.Config.update
    monkeypatch.setattr(wandb_run.Run, "log", lambda self, data, step=None, **k: (
        logged.append((dict(data), step)), log(self, data, step=step, **k))[1])  # fmt: skip
    monkeypatch.setattr(wandb_summary.Summary, "update", lambda self, d=None, **k: (
        summaries.append(dict(d or {})), summary_update(self, d, **k))[1])  # fmt: skip
    monkeypatch.setattr(wandb_config.Config, "update", lambda self, d, *a, **k: (
        configs.append(dict(d)), config_update(self, d, *a, **k))[1])  # fmt: skip
    run_dir = tmp_path / "run"
    cfg = compose_config(["logger=wandb", "logger.offline=true", "scenario.n_experiences=2"], run_dir)
    metrics = run_cl(cfg)
    assert wandb.run is None  # closed at the end of the run
    run_id = (run_dir / "logs" / "wandb_run_id").read_text().strip()
    folders = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 1  # both experiences in one W&B run
    losses = [(data["trainer/global_step"], data["experience"]) for data, _ in logged if "train/loss" in data]
    assert [s for s, _ in losses] == list(range(6)) and [e for _, e in losses] == [0, 0, 0, 1, 1, 1]
    assert any(s.get("avg_acc") == pytest.approx(metrics["avg_acc"]) for s in summaries)
    assert any(c.get("method._target_") == "cl.methods.finetune.Finetune" for c in configs)
    assert any(isinstance(data.get("acc_matrix"), wandb.Image) for data, _ in logged)
    assert list(folders[0].glob("files/media/images/acc_matrix_*.png"))
