"""Benchmark: every unlearning method on one checkpoint and one forget set, against ``retrain``.

    python experiments/bench/unlearn_methods.py --checkpoint RUN_DIR --forget class --classes 3 --out /tmp/ubench

Runs ``retrain`` first (the reference), then SSD twice (empty importance cache, then cached), then the other
methods with ``reference=<retrain run>``, each through :func:`unlearn.pipeline.run_unlearning` in-process (same code
path as ``python -m unlearn.run``). Writes ``table.md`` / ``table.json`` in ``--out``: retain / forget accuracies,
both MIAs, the probe, seconds, plus the speed ratios: SSD (both importance modes, uncached and cached) over one plain
forward + backward pass over the same samples measured in the same process (goal <= 1.3x, issue 17), ``retrain / ssd``,
the torch thread count and the load average before and after.

Speed arithmetic. ``retrain`` replays the recipe: epochs x |D_r| training samples (default stream, class 6:
5 x 1211 = 6055); uncached SSD runs one forward + backward over D and D_f (1347 + 136 = 1483), cached SSD over D_f
alone (136). So retrain / SSD = (6055 / 1483 = 4.1) x c_train / c_ssd uncached and (6055 / 136 = 45) x c_train / c_ssd
cached, with c the cost per sample. Measured (one thread, load ~4): retrain 11.6 s = 1.9 ms per training sample;
uncached SSD 2.24 s = 1.5 ms per sample -> 5.2x; cached SSD 0.31 s = 2.2 ms per sample (3 batches: fixed costs weigh
more) -> 38x. The 50x goal is never reachable uncached (SSD must see D once, retrain sees D_r 5 times) and cached
only if an importance sample costs under 0.9 of a training sample. The cached path is what a second request pays.
``--threads 1`` by default: with two torch threads on two loaded cores (load 7-9) the same importance pass took 9x
longer (62 s vs 7 s for 542 samples: oversubscription).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = (
    "retain_train_acc",
    "retain_test_acc",
    "forget_train_acc",
    "forget_test_acc",
    "mia_entropy",
    "mia_loss",
    "probe_forget_test_acc",
    "seconds",
)
DEFAULT_METHODS = ("ssd", "lfssd", "iau", "finetune", "gradient_ascent", "random_label", "bad_teacher")


def compose(overrides: list[str]):  # noqa: ANN201
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import cl.resolvers  # noqa: F401
    import unlearn.resolvers  # noqa: F401

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose(config_name="unlearn", overrides=overrides)


def run_one(name: str, base: list[str], out: Path, extra: list[str]) -> dict:
    from unlearn.pipeline import run_unlearning

    overrides = [*base, f"unlearn_method={name.split(':')[0]}", *extra]
    run_dir = out / name.replace(":", "_")
    report = run_unlearning(compose(overrides), run_dir, overrides)
    print(f"{name:>16}: " + " ".join(f"{c}={report.get(c)}" for c in COLUMNS), flush=True)
    return report


def plain_pass_seconds(checkpoint: str, classes: str, batch_size: int, repeats: int = 2) -> dict[str, float]:
    """The physical limit of SSD's work: one plain forward + backward (batch-mean cross-entropy, model in eval mode,
    ``model.zero_grad`` per batch) over the same samples in the same loaders as SSD's ``order=reference``: D_f then D
    (what uncached SSD differentiates) and D_f alone (cached). Best of ``repeats``."""
    import time

    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "experiments" / "bench"))
    from unlearn_ssd_calibrate import build_task

    from unlearn.calibrate import class_task
    from unlearn.methods.ssd import ordered_pools

    base = build_task(checkpoint, int(classes.split(",")[0]))
    task = class_task(base, int(classes.split(",")[0]))
    forget, full = ordered_pools(task, "reference")
    model = task.ctx.method.to(task.device).eval()

    def one(loader) -> float:  # noqa: ANN001
        start = time.perf_counter()
        for batch in loader:
            model.zero_grad(set_to_none=True)
            x, y = batch[0].to(task.device), batch[1].to(task.device)
            F.cross_entropy(task.logits(model, x), y).backward()
        return time.perf_counter() - start

    out = {"forget": [], "full": []}
    for _ in range(repeats):
        out["forget"].append(one(task.loader(forget, batch_size=batch_size)))
        out["full"].append(one(task.loader(full, batch_size=batch_size)))
    f, d = min(out["forget"]), min(out["full"])
    return {"plain_uncached": f + d, "plain_cached": f}


def markdown(rows: dict[str, dict]) -> str:
    def f(v: object) -> str:
        return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    head = "| method | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1) + "\n"
    first = next(iter(rows.values()))
    lines = ["| original | " + " | ".join(f(first.get(f"original_{c}")) for c in COLUMNS) + " |"]
    lines += ["| " + k + " | " + " | ".join(f(r.get(c)) for c in COLUMNS) + " |" for k, r in rows.items()]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--forget", default="class")
    ap.add_argument("--classes", default="3", help="forget.classes for forget=class, e.g. 3 or 3,7")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides, e.g. unlearn_method.importance=per_sample")
    ap.add_argument("--out", default="/tmp/unlearn_bench")
    ap.add_argument("--reference", default=None, help="an earlier retrain run dir (same split): reuse it")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every method (1: stable under load)")
    args = ap.parse_args(argv)
    import os

    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [f"checkpoint={args.checkpoint}", f"forget={args.forget}", *args.extra]
    if args.forget == "class":
        base.append(f"forget.classes=[{args.classes}]")
    from unlearn.context import source_run_dir

    shutil.rmtree(source_run_dir(args.checkpoint) / "unlearn_cache", ignore_errors=True)
    if args.reference:
        rows = {"retrain": json.loads((Path(args.reference) / "unlearn_report.json").read_text())}
    else:
        rows = {"retrain": run_one("retrain", base, out, [])}
    ref = [f"reference={args.reference or out / 'retrain'}"]
    for name in args.methods.split(","):
        if name == "ssd":
            for mode in ("batch", "per_sample"):
                extra = [*ref, f"unlearn_method.importance={mode}"]
                src = source_run_dir(args.checkpoint) / "unlearn_cache"
                shutil.rmtree(src, ignore_errors=True)
                rows[f"ssd {mode} (no cache)"] = run_one(f"ssd:{mode}", base, out, extra)
                rows[f"ssd {mode} (cached)"] = run_one(f"ssd:{mode}_cached", base, out, extra)
        else:
            rows[name] = run_one(name, base, out, ref)
    speed = {}
    if "ssd batch (cached)" in rows:
        # side by side in this process: one plain forward + backward over the same samples (the physical limit)
        plain = plain_pass_seconds(args.checkpoint, args.classes, 64)
        speed.update(plain)
        for mode in ("batch", "per_sample"):
            unc, cac = rows[f"ssd {mode} (no cache)"]["seconds"], rows[f"ssd {mode} (cached)"]["seconds"]
            speed[f"ssd_{mode}_uncached_over_plain"] = unc / plain["plain_uncached"]  # goal <= 1.3
            speed[f"ssd_{mode}_cached_over_plain"] = cac / plain["plain_cached"]  # goal <= 1.3
            speed[f"retrain_over_ssd_{mode}_uncached"] = rows["retrain"]["seconds"] / unc
            speed[f"retrain_over_ssd_{mode}_cached"] = rows["retrain"]["seconds"] / cac
    speed.update(threads=args.threads, loadavg_before=load_before, loadavg_after=os.getloadavg())
    text = markdown(rows) + "\n" + json.dumps(speed, indent=1) + "\n"
    from cl.utils.atomic import write_text

    write_text(out / "table.md", text)
    write_text(out / "table.json", json.dumps({"rows": rows, "speed": speed}, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
