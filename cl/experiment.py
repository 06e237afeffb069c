"""Build a stream and a method from a composed config and run them; shared by ``cl.run`` and ``unlearn.run``.

Everything is built with ``hydra.utils.instantiate`` from the ``_target_`` of each config group: ``data.source`` (the
dataset loader), ``scenario`` (the Avalanche stream builder), ``backbone`` and ``method``. Any error raised while
building (unknown keys or values, classes that do not divide, missing data or weights, a checkpoint that does not fit)
surfaces as :class:`ConfigurationError` before training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


class ConfigurationError(ValueError):
    """Bad input found before training; the message names the key, the value and what is allowed."""


def _unwrap(err: BaseException) -> str:
    """The innermost cause's message (Hydra wraps errors raised by targets), plus Hydra's ``full_key``."""
    inner = err
    while isinstance(inner, InstantiationException) and inner.__cause__ is not None:
        inner = inner.__cause__
    msg = str(inner)
    key = str(err).split("full_key:")[-1].strip() if "full_key:" in str(err) else None
    return f"{msg} (config: {key})" if key and key not in msg else msg


def build(cfg: DictConfig) -> tuple[Any, Any]:
    """Instantiate ``(stream, method)`` from ``cfg`` after ``seed_everything(cfg.seed)``, so the same config always
    gives the same initial weights; raises :class:`ConfigurationError` on bad input."""
    from lightning.fabric.utilities.seed import seed_everything

    from cl.backbones import BackboneWeightsError
    from cl.data.sources import DatasetNotFoundError

    try:
        datasets = instantiate(cfg.data.source)
        stream = instantiate(cfg.scenario, _partial_=True)(datasets=datasets)
        # after the stream: Avalanche's generators reseed the global RNG with the class-order seed
        seed_everything(int(cfg.seed), verbose=False)  # the initial weights depend on the seed only
        backbone = instantiate(cfg.backbone)
        method = instantiate(cfg.method, _partial_=True)(backbone=backbone, num_classes=stream.num_classes)
        method.setup_stream(stream)
    except (DatasetNotFoundError, BackboneWeightsError) as err:
        raise ConfigurationError(str(err)) from err
    except (InstantiationException, ValueError, TypeError) as err:
        inner = err
        while isinstance(inner, InstantiationException) and inner.__cause__ is not None:
            inner = inner.__cause__
        if isinstance(inner, (DatasetNotFoundError, BackboneWeightsError)):
            raise ConfigurationError(str(inner)) from err
        raise ConfigurationError(_unwrap(err)) from err
    return stream, method


def _comparable(container: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in container.items() if k not in ("resume",)}


def _prepare_resume(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, dict[str, Any] | None]:
    """Return the config to run and the checkpoint payload to continue from (None for a fresh run)."""
    from cl.engine.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, task_checkpoints

    if cfg.get("resume"):
        try:
            payload = load_checkpoint(resolve_checkpoint(cfg.resume))
        except CheckpointError as err:
            raise ConfigurationError(f"resume={cfg.resume!r}: {err}") from err
        saved = OmegaConf.create(payload["config"])
        saved.resume = str(cfg.resume)
        return saved, payload
    existing = task_checkpoints(run_dir)
    if not existing:
        return cfg, None
    payload = load_checkpoint(existing[max(existing)])
    now = _comparable(OmegaConf.to_container(cfg, resolve=True))
    if _comparable(payload["config"]) != now:
        raise ConfigurationError(
            f"hydra.run.dir={str(run_dir)!r} already holds a run with another config; nothing was overwritten. "
            f"Choose a new hydra.run.dir, or continue that run with resume={run_dir}"
        )
    return cfg, payload  # a requeued job re-launched into its own run directory continues where it stopped


def _check_processes(cfg: DictConfig) -> None:
    """Multi-process (DDP) settings the engine cannot run are refused before training (cl/engine/distributed.py)."""
    from hydra.types import RunMode

    from cl.engine.distributed import check_distributed_config

    try:
        check_distributed_config(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)
    except ValueError as err:
        raise ConfigurationError(str(err)) from err


def run_experiment(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the experiment described by ``cfg`` in Hydra's output directory; returns the metrics."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg, payload = _prepare_resume(cfg, run_dir)
    _check_processes(cfg)
    from lightning.fabric.utilities.seed import seed_everything

    seed_everything(int(cfg.seed), verbose=False)  # build() initialises the weights: the same in every process and rank
    stream, method = build(cfg)

    from cl.engine.checkpoint import CheckpointError, load_method_state
    from cl.engine.loop import StreamRunner, is_global_zero
    from cl.engine.run_record import write_run_record
    from cl.metrics import print_summary

    runner = StreamRunner(cfg, method, stream, run_dir)
    if payload is not None:
        try:
            load_method_state(method, payload["state_dict"], f"for experience {payload['experience']}")
        except CheckpointError as err:
            raise ConfigurationError(str(err)) from err
        if payload["class_order"] != stream.class_order:
            raise ConfigurationError("the checkpoint's class order differs from the rebuilt stream's")
        runner.restore(payload)
    if is_global_zero():
        write_run_record(
            run_dir,
            OmegaConf.to_yaml(cfg, resolve=True),
            int(cfg.seed),
            resumed_from=None if payload is None else int(payload["experience"]),
        )
    metrics = runner.run()
    if is_global_zero():
        print_summary(metrics, title=f"{metrics['method']} on {cfg.data.name} ({stream.scenario}-incremental)")
        print(f"run directory: {run_dir}")
    return metrics
