"""One unlearning run: load the checkpoint, split, check, evaluate before, unlearn (timed), evaluate after, write.

Order matters for honest reporting and for "bad input stops before any work": the output directory is claimed
(an OS lock; refused when an earlier unlearning or training run wrote there), every check (checkpoint, forget spec,
method options, reference split) runs before the first forward pass and the first file; the source checkpoint is only
read; the timed section is the method's ``unlearn`` call alone (``retrain`` reports its runner's training time),
never evaluation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unlearn.context import UnlearnConfigError, load_context


def _instantiate(node: DictConfig, key: str) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except (InstantiationException, ValueError, TypeError) as err:
        inner: BaseException = err
        while isinstance(inner, InstantiationException) and inner.__cause__ is not None:
            inner = inner.__cause__
        raise UnlearnConfigError(f"{key}: {inner}") from err


def load_reference(path: str, digest: str) -> dict[str, Any]:
    """The ``unlearn_report.json`` of ``path`` (a file or an unlearning run directory), checked to share the split."""
    p = Path(path)
    p = p / "unlearn_report.json" if p.is_dir() else p
    if not p.is_file():
        raise UnlearnConfigError(f"reference={path!r}: no unlearn_report.json there (give an unlearning run directory)")
    ref = json.loads(p.read_text())
    if ref.get("split_digest") != digest:
        raise UnlearnConfigError(
            f"reference={path!r} was run on another split (digest {ref.get('split_digest')} != {digest}); rerun it "
            "with forget=indices forget.path=<this run> or the same forget options"
        )
    return ref


# what an earlier unlearning run or a cl.run run leaves in its directory: an unlearning run never writes over them
USED_MARKERS = ("unlearn_report.json", "splits", "checkpoints", ".hydra", "metrics.json", "config.yaml")


def claim_output(run_dir: Path) -> None:
    """Hold ``run_dir`` (cl/engine/run_dir.py); refuse it when an earlier run (unlearning or training) wrote there."""
    from cl.engine.run_dir import claim

    try:
        claim(run_dir)
    except ValueError as err:
        raise UnlearnConfigError(str(err)) from err
    used = [m for m in USED_MARKERS if (run_dir / m).exists()]
    if used:
        raise UnlearnConfigError(
            f"hydra.run.dir={str(run_dir)!r} already holds a run ({', '.join(used)}); nothing was overwritten. Leave "
            "hydra.run.dir unset (each unlearning run gets a new <run>/unlearn/<method>-<forget>-<time> directory) "
            "or choose an empty one"
        )


def run_unlearning(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the unlearning described by ``cfg`` into ``run_dir``; returns the report."""
    import torch

    from cl.engine.checkpoint import save_checkpoint
    from cl.engine.distributed import is_global_zero
    from cl.engine.loop import compute_device
    from unlearn.data import PoolDataset, evaluation_views
    from unlearn.distributed import evaluate_once, start_processes
    from unlearn.evaluate import combine
    from unlearn.forget import ForgetError, SeenData, make_split, write_splits
    from unlearn.methods.base import UnlearnTask
    from unlearn.report import write_report

    run_dir = Path(run_dir)
    if is_global_zero():
        claim_output(run_dir)
    spec = _instantiate(cfg.forget, "forget")  # cheap option checks first, then the checkpoint
    method = _instantiate(cfg.unlearn_method, "unlearn_method")
    try:
        from unlearn.relearn import check_relearn

        check_relearn(cfg.eval.get("relearn"))
    except (ValueError, TypeError) as err:
        raise UnlearnConfigError(str(err)) from err
    ctx = load_context(cfg.get("checkpoint"), cfg, overrides)
    seen = SeenData(ctx.stream, ctx.experience)
    try:
        split = make_split(spec, seen)
    except ForgetError as err:
        raise UnlearnConfigError(str(err)) from err
    reference = load_reference(str(cfg.reference), split.digest()) if cfg.get("reference") else None
    device = compute_device(ctx.cfg.trainer)
    views = evaluation_views(ctx.stream)  # training samples through the deterministic evaluation transform
    task = UnlearnTask(
        ctx=ctx,
        split=split,
        forget=PoolDataset(ctx.stream, split.forget_train, "train", views),
        retain=PoolDataset(ctx.stream, split.retain_train, "train", views),
        full=PoolDataset(ctx.stream, seen.train_keys, "train", views),
        mask=ctx.method.seen_classes.detach().cpu().clone(),
        batch_size=int(ctx.cfg.data.batch_size),
        device=device,
        seed=int(cfg.seed),
        work_dir=Path(run_dir),
        forget_type=str(cfg.forget.name),
    )
    method.check(task)
    if start_processes(ctx.cfg) > 1:  # trainer=ddp/ddp_cpu: the other ranks start here (unlearn/distributed.py)
        task.device = compute_device(ctx.cfg.trainer)

    if is_global_zero():  # under DDP rank 0 alone writes (splits, checkpoint, report)
        from hydra.core.hydra_config import HydraConfig

        from cl.engine.run_dir import write_hydra_record

        if HydraConfig.initialized():
            write_hydra_record(run_dir, ".hydra", cfg)
        else:  # a library call (studies, benchmarks compose in-process): the config and the overrides given
            from cl.utils.atomic import write_text

            write_text(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
            write_text(run_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(list(overrides or [])))
        write_splits(split, ctx.stream, run_dir / "splits")
    eval_bs, probe = int(ctx.cfg.data.eval_batch_size), bool(cfg.eval.probe)
    torch.manual_seed(int(cfg.seed))
    before = evaluate_once(ctx.method, task, eval_bs, probe)
    start = time.perf_counter()
    model = method.unlearn(ctx.method, task)
    seconds = float(method.info.pop("method_seconds", time.perf_counter() - start))
    after = evaluate_once(model, task, eval_bs, probe)
    if cfg.eval.get("relearn") is not None:  # every rank computes it (deterministic, no collective step)
        from unlearn.relearn import relearn_attack

        after.update(relearn_attack(model, task, cfg.eval.relearn, eval_bs))

    report = combine(after, before, reference)
    report.update(
        seconds=seconds,
        method=method.name,
        method_info=method.info,
        forget=str(cfg.forget.name),
        forget_config=OmegaConf.to_container(cfg.forget, resolve=True),
        forget_classes=split.forget_classes,
        split_digest=split.digest(),
        sizes={
            k: len(getattr(split, k)) for k in ("forget_train", "retain_train", "forget_test", "retain_test", "test")
        },
        checkpoint=str(ctx.checkpoint),
        checkpoint_sha256=ctx.checkpoint_hash,
        experience=ctx.experience,
        reference=str(cfg.reference) if cfg.get("reference") else None,
        seed=int(cfg.seed),
    )
    payload = dict(ctx.payload)
    payload["state_dict"] = model.state_dict()
    payload["unlearning"] = {
        k: report[k] for k in ("method", "forget", "split_digest", "checkpoint", "checkpoint_sha256")
    }
    if is_global_zero():
        save_checkpoint(run_dir / "checkpoints" / f"unlearned_task_{ctx.experience}.ckpt", payload)
        write_report(run_dir, report, reference)
    return report
