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

from cl.errors import ConfigurationError, RunDirTaken

__all__ = ["ConfigurationError", "RunDirTaken", "build", "run_experiment"]


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


def _resume_from(
    cfg: DictConfig, run_dir: Path, overrides: list[str], writer: bool = True
) -> tuple[DictConfig, dict[str, Any]]:
    """``resume=DIR|CKPT``: the saved config with the command-line keys that may change applied
    (cl/engine/resume_policy.py), and the checkpoint payload."""
    from cl.engine.checkpoint import (
        CheckpointError,
        checkpoint_run_dir,
        load_checkpoint,
        resolve_checkpoint,
        task_checkpoints,
    )
    from cl.engine.resume_policy import merge_for_resume

    try:
        ckpt = resolve_checkpoint(cfg.resume)
        payload = load_checkpoint(ckpt)
    except CheckpointError as err:
        raise ConfigurationError(f"resume={cfg.resume!r}: {err}") from err
    t = int(payload["experience"])
    same_dir = checkpoint_run_dir(ckpt).resolve() == run_dir.resolve()
    held = task_checkpoints(run_dir)
    later = sorted(k for k in held if k > t)
    if writer and same_dir and later:  # (another DDP rank starts after rank 0 checked and copied: no check there)
        raise RunDirTaken(
            f"resume={cfg.resume!r}: {str(run_dir)!r} holds checkpoints after experience {t} "
            f"(task_{later[0]}.ckpt ...), which continuing there would overwrite; nothing was written. Resume from the "
            f"run directory (its last checkpoint) or continue elsewhere with hydra.run.dir=NEW_DIR"
        )
    if writer and not same_dir and (held or (run_dir / "checkpoints" / "initial.ckpt").exists()):
        raise RunDirTaken(
            f"hydra.run.dir={str(run_dir)!r} already holds another run; nothing was overwritten. Choose an empty "
            "hydra.run.dir to continue the resumed run in"
        )
    given = OmegaConf.to_container(cfg, resolve=True)
    try:
        merged, applied = merge_for_resume(payload["config"], given, overrides)
    except ValueError as err:
        raise ConfigurationError(f"resume={cfg.resume!r}: {err}") from err
    merged["resume"] = str(cfg.resume)
    if isinstance(merged.get("paths"), dict):
        merged["paths"]["output_dir"] = str(run_dir)
    payload["_applied_on_resume"] = applied
    payload["_source_checkpoint"] = str(ckpt)
    return OmegaConf.create(merged), payload


def _prepare_resume(
    cfg: DictConfig, run_dir: Path, overrides: list[str], writer: bool = True
) -> tuple[DictConfig, dict[str, Any] | None]:
    """Return the config to run and the checkpoint payload to continue from (None for a fresh run). Writes nothing.

    Without ``resume``, a directory holding a checkpoint (a requeued or re-run job) continues when its saved config
    equals this one up to the keys that may change on resume; any other difference is refused (:class:`RunDirTaken`),
    except over a first attempt that failed (``failed.json``) before completing an experience: a fresh run replaces it.
    """
    from cl.engine.checkpoint import last_checkpoint, load_checkpoint
    from cl.engine.resume_policy import describe, refused_differences

    if cfg.get("resume"):
        return _resume_from(cfg, run_dir, overrides, writer)
    last = last_checkpoint(run_dir)
    if last is None:
        return cfg, None
    payload = load_checkpoint(last)
    now = _comparable(OmegaConf.to_container(cfg, resolve=True))
    refused = refused_differences(_comparable(payload["config"]), now)
    if refused and last.name == "initial.ckpt" and (run_dir / "failed.json").exists():
        return cfg, None  # a first attempt that failed before completing an experience: nothing to keep
    if refused:
        raise RunDirTaken(
            f"hydra.run.dir={str(run_dir)!r} already holds a run with another config ({describe(refused)}); nothing "
            f"was overwritten. Choose a new hydra.run.dir, or continue that run with resume={run_dir}"
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


def is_multirun() -> bool:
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def run_experiment(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the experiment described by ``cfg`` in Hydra's output directory; returns the metrics.

    The writing process (global rank 0) holds the directory's lock for the whole run (cl/engine/run_dir.py); every
    check runs before the first file is written. An error after the checks is recorded in ``failed.json`` (a config
    error too, inside a sweep: ``experiments.aggregate`` lists the job as failed).
    """
    from cl.engine.distributed import is_global_zero
    from cl.engine.run_dir import claim, command_line_overrides, release, write_failure

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    overrides = command_line_overrides()
    writer = is_global_zero()
    if writer:
        claim(run_dir)
    try:
        if writer:
            return _run_owned(cfg, run_dir, overrides, writer)
        from cl.engine.run_log import console_to_run_log

        with console_to_run_log(run_dir, append=True, name=f"{HydraConfig.get().job.name}.log"):
            return _run_owned(cfg, run_dir, overrides, writer)
    except RunDirTaken:
        raise
    except ConfigurationError as err:
        if writer and is_multirun():
            write_failure(run_dir, err, overrides)
        raise
    except Exception as err:
        from cl.engine.loop import Preempted

        if writer and not isinstance(err, Preempted):
            write_failure(run_dir, err, overrides)
        raise
    finally:
        if writer:
            release(run_dir)


def _run_owned(cfg: DictConfig, run_dir: Path, overrides: list[str], writer: bool) -> dict[str, Any]:
    from contextlib import nullcontext

    from cl.engine.config_checks import check_values

    composed = cfg
    cfg, payload = _prepare_resume(cfg, run_dir, overrides, writer)
    check_values(cfg)
    _check_processes(cfg)
    from lightning.fabric.utilities.seed import seed_everything

    seed_everything(int(cfg.seed), verbose=False)  # build() initialises the weights: the same in every process and rank
    stream, method = build(cfg)

    from cl.engine.checkpoint import CheckpointError, load_method_state
    from cl.engine.loop import StreamRunner
    from cl.engine.run_log import console_to_run_log
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
    if writer:
        _write_records(run_dir, composed, cfg, payload)
    with console_to_run_log(run_dir, append=payload is not None) if writer else nullcontext():
        metrics = runner.run()
        if writer:
            from cl.loggers import log_run_end  # logger=wandb / mlflow: config, summary and matrix picture at the end

            log_run_end(cfg.get("logger"), OmegaConf.to_container(cfg, resolve=True), run_dir, metrics)
            print_summary(metrics, title=f"{metrics['method']} on {cfg.data.name} ({stream.scenario}-incremental)")
            print(f"run directory: {run_dir}")
    return metrics


def _write_records(run_dir: Path, composed: DictConfig, cfg: DictConfig, payload: dict[str, Any] | None) -> None:
    """The run's records, once every check passed: Hydra's (``.hydra/`` or ``.hydra_resume/``), ``config.yaml`` and
    ``run_info[.resume_<t>].json``; a fresh run first drops an earlier failed attempt's records."""
    import shutil

    from cl.engine.checkpoint import checkpoint_run_dir
    from cl.engine.run_dir import clear_stale_records, remove_orphaned_tmp, write_hydra_record
    from cl.engine.run_record import write_run_record

    remove_orphaned_tmp(run_dir)
    if payload is None:
        clear_stale_records(run_dir)
        (run_dir / "checkpoints" / "initial.ckpt").unlink(missing_ok=True)  # rewritten by this run
    else:
        (run_dir / "failed.json").unlink(missing_ok=True)
        source = payload.get("_source_checkpoint")
        if source and checkpoint_run_dir(source).resolve() != run_dir.resolve():  # continue in a new directory
            src = checkpoint_run_dir(source) / "checkpoints"
            t = int(payload["experience"])
            names = ["initial.ckpt", *(f"task_{k}.ckpt" for k in range(t + 1))]
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            for name in names:
                if (src / name).is_file():
                    shutil.copy2(src / name, run_dir / "checkpoints" / name)
    write_hydra_record(run_dir, ".hydra" if payload is None else ".hydra_resume", composed)
    extra = None
    if payload is not None:
        extra = {"resumed_from": payload.get("_source_checkpoint"), "applied": payload.get("_applied_on_resume", [])}
    write_run_record(
        run_dir,
        OmegaConf.to_yaml(cfg, resolve=True),
        int(cfg.seed),
        resumed_from=None if payload is None else int(payload["experience"]),
        extra=extra,
    )
