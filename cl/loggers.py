"""Experiment trackers for ``logger=wandb`` (Weights & Biases) and ``logger=mlflow`` (MLflow): Lightning's
``WandbLogger`` / ``MLFlowLogger``, with one tracker run per ``cl.run`` run.

The engine builds one Lightning ``Trainer`` (and logger) per experience (``cl/engine/trainer.py``: ``save_dir`` = the
run directory, ``version`` = ``exp_{t}``). Here every experience's logger writes into the same tracker run, identified
by an id kept in ``<run>/logs/<tracker>_run_id`` (so a resumed run continues its tracker run), with its steps offset
by the steps of the earlier experiences (a tracker's step axis never rewinds; W&B drops rewound steps) and an
``experience`` value beside every logged row. At the end of the run, :func:`log_run_end` logs the resolved config (as
flattened hyper-parameters), the numeric entries of ``metrics.json`` (its summary: A_T, forgetting, BWT, seconds,
FLOPs, ...) and the accuracy-matrix picture, then closes the tracker run.

* W&B: ``project``, ``entity``, ``group``, ``tags``, ``offline`` (no account needed; ``wandb sync <run>/wandb/...``
  uploads later). The run's files go to ``<run>/wandb/``.
* MLflow: ``tracking_uri`` (a folder: a local file store there, ``conf/logger/mlflow.yaml``: ``<paths.log_dir>/mlruns``
  shared by all runs, so that they can be compared; or any URI MLflow accepts: ``sqlite:///...``, ``http://server``),
  ``experiment_name``, ``tags``. The final metrics are logged as ``final/<name>``.
  MLflow 3 refuses the file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set (it is in maintenance mode): the factory
  sets it for ``file:`` URIs only.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

from cl.utils.atomic import write_text

_LAST_STEP: dict[str, int] = {}  # tracker run id -> last step logged in this process


class _StepOffset:
    """Mixin for a Lightning logger: offset steps past the earlier experiences, add ``experience`` to every row."""

    run_key: str = ""
    experience: int = 0
    step_offset: int | None = None

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.step_offset is None:
            last = _LAST_STEP.get(self.run_key)
            self.step_offset = 0 if last is None else last + 1
        if step is not None:
            step = int(step) + self.step_offset
            _LAST_STEP[self.run_key] = max(step, _LAST_STEP.get(self.run_key, -1))
        super().log_metrics({**metrics, "experience": self.experience}, step)  # type: ignore[misc]


def _experience(version: str) -> int:
    match = re.fullmatch(r"exp_(\d+)", str(version))
    if match is None:
        raise ValueError(f"logger version={version!r}; the engine names experiences 'exp_<t>'")
    return int(match.group(1))


def _run_id(run_dir: Path, tracker: str, make: Any) -> str:
    """The tracker run id of ``run_dir``: read from ``logs/<tracker>_run_id``, or made by ``make()`` and written."""
    path = run_dir / "logs" / f"{tracker}_run_id"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = str(make())
    write_text(path, run_id + "\n")
    return run_id


class Wandb(_StepOffset, WandbLogger):
    """A ``WandbLogger`` writing experience ``version`` of the run in ``save_dir`` into the run's W&B run."""

    def __init__(
        self, save_dir: str, name: str, version: str, project: str = "continual-learning", entity: str | None = None,
        group: str | None = None, tags: list[str] | None = None, offline: bool = False,
    ) -> None:  # fmt: skip
        import wandb as wandb_sdk

        run_dir = Path(save_dir)
        safe = re.sub(r"[^A-Za-z0-9_-]+", "-", run_dir.name)[:40] or "run"
        run_id = _run_id(run_dir, "wandb", lambda: f"{safe}-{uuid.uuid4().hex[:8]}")
        if wandb_sdk.run is not None and wandb_sdk.run.id != run_id:
            wandb_sdk.finish()  # another run's tracker run is still open in this process (sweeps run in one process)
        super().__init__(
            name=run_dir.name, save_dir=str(run_dir), version=run_id, offline=bool(offline), project=project,
            entity=entity, group=group, tags=list(tags or []), resume="allow", job_type="train",
        )  # fmt: skip
        self.run_key, self.experience = f"wandb:{run_id}", _experience(version)


class MLflow(_StepOffset, MLFlowLogger):
    """An ``MLFlowLogger`` writing experience ``version`` of the run in ``save_dir`` into the run's MLflow run."""

    def __init__(
        self, save_dir: str, name: str, version: str, tracking_uri: str | None = None,
        experiment_name: str = "continual-learning", tags: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        run_dir = Path(save_dir)
        uri = str(tracking_uri or run_dir / "mlruns")
        if "://" not in uri and not uri.startswith("file:"):  # a folder: the local file store there
            uri = Path(uri).resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

        def new_run() -> str:
            from mlflow import MlflowClient

            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment_name)
            exp_id = found.experiment_id if found is not None else client.create_experiment(experiment_name)
            run_tags = {"run_dir": str(run_dir.resolve()), "mlflow.runName": run_dir.name, **(tags or {})}
            return client.create_run(exp_id, tags=run_tags).info.run_id

        run_id = _run_id(run_dir, "mlflow", new_run)
        super().__init__(experiment_name=experiment_name, tracking_uri=uri, run_id=run_id)
        self.run_key, self.experience = f"mlflow:{run_id}", _experience(version)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree if isinstance(tree, int | float | str | bool) or tree is None else json.dumps(tree)}


def _summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def log_run_end(logger_cfg: Any, config: dict[str, Any], run_dir: Path, metrics: dict[str, Any]) -> str | None:
    """Log ``config``, the numeric ``metrics`` and ``<run>/acc_matrix.png`` to the run's tracker run and close it.
    Returns the tracker's name, or None when ``logger_cfg`` is not one of this module's trackers."""
    target = str((logger_cfg or {}).get("_target_") or "")
    run_dir = Path(run_dir)
    picture = run_dir / "acc_matrix.png"
    if target == f"{__name__}.Wandb":
        import wandb as wandb_sdk

        run = wandb_sdk.run
        if run is None:  # nothing was trained in this process (e.g. a finished run re-run): reopen the tracker run
            logger = Wandb(str(run_dir), "logs", "exp_0", **_kwargs(logger_cfg))
            run = logger.experiment
        run.config.update(_flatten(config), allow_val_change=True)
        run.summary.update(_summary(metrics))
        if picture.is_file():
            run.log({"acc_matrix": wandb_sdk.Image(str(picture))})
        wandb_sdk.finish()
        return "wandb"
    if target == f"{__name__}.MLflow":
        logger = MLflow(str(run_dir), "logs", "exp_0", **_kwargs(logger_cfg))
        client, run_id = logger.experiment, logger.run_id
        from mlflow.entities import Metric, Param

        params = [Param(k, ("" if v is None else str(v))[:6000]) for k, v in _flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            client.log_batch(run_id, params=params[start : start + 100])
        now = int(time.time() * 1000)
        finals = [Metric(f"final/{k}", v, now, 0) for k, v in _summary(metrics).items()]
        for start in range(0, len(finals), 1000):
            client.log_batch(run_id, metrics=finals[start : start + 1000])
        for path in (picture, run_dir / "metrics.json"):
            if path.is_file():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
        return "mlflow"
    return None


def _kwargs(logger_cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(logger_cfg).items() if not str(k).startswith("_")}
