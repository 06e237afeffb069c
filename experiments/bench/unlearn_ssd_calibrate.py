"""Calibrate SSD's alpha / lambda (or LFSSD's, or IAU's step) on one checkpoint with held-out forget classes: the
calibration of ``alpha=auto`` (``unlearn/calibrate.py``) with the classes given by hand, printed as a table.

    python experiments/bench/unlearn_ssd_calibrate.py --checkpoint RUN_DIR --classes 0,5 --mode batch
    python experiments/bench/unlearn_ssd_calibrate.py --checkpoint RUN_DIR --classes 0,5 --order shuffled

Importances are computed once per class (in the method's batch order, default the reference's; the full-data
importance is cached in the checkpoint's run directory), then every grid point is a cheap dampening of a copy of the
model, scored on the test split: forget-test accuracy of the class and the drop of retain-test accuracy (the other
classes). Use classes *other* than the ones you report on. Prints one line per grid point (mean over the classes, then
per class) and the point ``alpha=auto``'s criterion would choose.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

GRID = {
    "batch": [500.0, 200.0, 100.0, 50.0, 25.0, 15.0, 10.0, 5.0, 2.0, 1.0, 0.5],
    "per_sample": [0.98, 0.95, 0.9, 0.85, 0.8, 0.6, 0.4, 0.2],
    "iau": [1e-5, 3e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7e-4, 1e-3, 2e-3],
}


def build_task(checkpoint: str, first_class: int, seed: int = 0):  # noqa: ANN201
    """The pipeline's ``UnlearnTask`` for ``checkpoint`` with no class forgotten (calibration builds its own)."""
    from cl.engine.loop import compute_device
    from unlearn.context import load_context
    from unlearn.data import PoolDataset, evaluation_views
    from unlearn.forget import ClassForget, SeenData, make_split
    from unlearn.methods.base import UnlearnTask

    ctx = load_context(checkpoint)
    seen = SeenData(ctx.stream, ctx.experience)
    split = dataclasses.replace(make_split(ClassForget([first_class]), seen), forget_classes=[])
    views = evaluation_views(ctx.stream)
    return UnlearnTask(
        ctx=ctx,
        split=split,
        forget=PoolDataset(ctx.stream, split.forget_train, "train", views),
        retain=PoolDataset(ctx.stream, split.retain_train, "train", views),
        full=PoolDataset(ctx.stream, seen.train_keys, "train", views),
        mask=ctx.method.seen_classes.detach().cpu().clone(),
        batch_size=int(ctx.cfg.data.batch_size),
        device=compute_device(ctx.cfg.trainer),
        seed=seed,
        work_dir=ctx.run_dir,
    )


def main(argv: list[str] | None = None) -> int:
    import torch

    from unlearn.calibrate import AutoConfig, calibrate, choose

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--classes", default="0,5")
    ap.add_argument("--method", default="ssd", choices=["ssd", "lfssd", "iau"])
    ap.add_argument("--mode", default="batch", choices=["batch", "per_sample"], help="SSD/LFSSD importance")
    ap.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="IAU's step")
    ap.add_argument("--order", default="reference", choices=["reference", "shuffled"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lambdas", default="1.0")
    ap.add_argument("--grid", default=None, help="comma-separated values (alpha, alpha_relative or eta)")
    ap.add_argument("--forget-max", type=float, default=0.05)
    ap.add_argument("--retain-drop-max", type=float, default=0.03)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    classes = [int(v) for v in args.classes.split(",")]
    key = "iau" if args.method == "iau" else args.mode
    grid = [float(v) for v in args.grid.split(",")] if args.grid else GRID[key]
    auto = AutoConfig(
        grid=grid,
        grid_relative=grid,
        lambdas=[float(v) for v in args.lambdas.split(",")],
        forget_max=args.forget_max,
        retain_drop_max=args.retain_drop_max,
    )
    if args.method == "iau":
        from unlearn.methods.iau import IAU

        method = IAU(lr="auto", optimizer=args.optimizer)
    else:
        from unlearn.methods.ssd import LFSSD, SSD

        cls = SSD if args.method == "ssd" else LFSSD
        method = cls(importance=args.mode, order=args.order, batch_size=args.batch_size, alpha="auto")
    task = build_task(args.checkpoint, classes[0])
    model = task.ctx.method.to(task.device)
    _, _, entry = calibrate(method, model, task, auto, classes=classes)
    print(f"{args.checkpoint}: method={args.method} mode={args.mode} order={args.order} classes={classes}")
    for t in entry["table"]:
        per = " ".join(f"{p['forget']:.2f}/{100 * p['retain_drop']:+.1f}" for p in t["per_class"])
        print(
            f"value={t['value']:<6g} lambda={t['lambda']:<4g} forget_test={t['forget']:.3f} "
            f"retain_drop={100 * t['retain_drop']:+.1f} pts   per class (forget/drop): {per}"
        )
    best, ok = choose(entry["table"], auto)
    print(f"chosen: value={best['value']:g} lambda={best['lambda']:g} (criterion met: {ok})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
