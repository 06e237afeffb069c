"""Benchmark: SSD's speed against its physical limit and against ``retrain``; every unlearning method on one forget set.

    flock -w 600 -x /tmp/bench.lock python experiments/bench/unlearn_methods.py --checkpoint RUN_DIR --classes 3 \
        --speed-only --repeats 7

Speed (issue 17's goal: SSD's time <= 1.3x one plain forward + backward pass over the same samples, both modes, both
importance modes). In one process, for ``--repeats`` rounds, each round times every variant once, in an order rotated
by one per round (interleaved side by side: a load change hits every variant alike):

* ``plain_uncached``: one plain forward + backward (batch-mean cross-entropy of the evaluation logits, the model in
  eval mode, ``zero_grad`` per batch) over D_f then D in SSD's loaders (``order=reference``): what uncached SSD must
  differentiate; ``plain_cached``: over D_f alone (cached SSD's work);
* ``ssd_<mode>_uncached`` / ``ssd_<mode>_cached`` (mode ``batch`` | ``per_sample``): ``SSD.unlearn`` on a fresh copy of
  the model, exactly as the pipeline times it (importances, selection and dampening), with the importance cache off /
  warm (the cached entry is read from disk each time).

Reported per variant: every time, the median; per ratio the ratio of medians and the median of the per-round ratios
(the same round's SSD over the same round's plain pass). ``retrain`` (``Retrain.unlearn``, the recipe replayed on D_r in
a temporary directory; its runner's training seconds, as the pipeline reports them) is timed ``--retrain-repeats``
times after the rounds; ``retrain / ssd`` uses medians. The thread count and the load average before and after are in
the output. ``--threads 1`` by default: with two torch threads on two loaded cores the same importance pass
took 9x longer (oversubscription).

Without ``--speed-only`` every method in ``--methods`` also runs once through :func:`unlearn.pipeline.run_unlearning`
(retrain first, the others with ``reference=<retrain run>``), and ``table.md`` gets retain / forget accuracies, both
MIAs, the probe and seconds. Results: experiments/unlearn_native/README.md ("Speed against the physical limit").
"""

from __future__ import annotations

import argparse
import json
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


def speed(checkpoint: str, c: int, repeats: int, batch_size: int, retrain_repeats: int) -> dict:
    """The interleaved speed rounds of the module docstring for forgetting class ``c`` of ``checkpoint``."""
    import copy
    import dataclasses
    import statistics
    import tempfile
    import time

    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "experiments" / "bench"))
    from unlearn_ssd_calibrate import build_task

    from unlearn.calibrate import class_task
    from unlearn.methods.retrain import Retrain
    from unlearn.methods.ssd import SSD, ordered_pools

    task = class_task(build_task(checkpoint, c), c)
    model = task.ctx.method.to(task.device).eval()

    def plain(cached: bool) -> float:
        start = time.perf_counter()
        forget, full = ordered_pools(task, "reference")
        for pool in (forget,) if cached else (forget, full):
            for batch in task.loader(pool, batch_size=batch_size):
                model.zero_grad(set_to_none=True)
                x, y = batch[0].to(task.device), batch[1].to(task.device)
                F.cross_entropy(task.logits(model, x), y).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def ssd(mode: str, cached: bool, warm: bool = False) -> float:
        m = copy.deepcopy(model)
        method = SSD(importance=mode, batch_size=batch_size, cache=cached)
        start = time.perf_counter()
        method.unlearn(m, task)
        seconds = time.perf_counter() - start
        assert warm or method.info["importance_cached"] == cached, method.info
        return seconds

    variants = {"plain_uncached": lambda: plain(False), "plain_cached": lambda: plain(True)}
    for mode in ("batch", "per_sample"):
        ssd(mode, True, warm=True)  # warm the cache entry (and the first-call costs) before the rounds
        variants[f"ssd_{mode}_uncached"] = lambda mode=mode: ssd(mode, False)
        variants[f"ssd_{mode}_cached"] = lambda mode=mode: ssd(mode, True)
    plain(False)
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            times[n].append(variants[n]())
    med = {n: statistics.median(v) for n, v in times.items()}
    out: dict = {"class": c, "samples": {"forget": len(task.forget), "full": len(task.full)}, "seconds": times}
    out["median"] = med
    for mode in ("batch", "per_sample"):
        for kind in ("uncached", "cached"):
            a, b = times[f"ssd_{mode}_{kind}"], times[f"plain_{kind}"]
            out[f"ssd_{mode}_{kind}_over_plain"] = {
                "ratio_of_medians": med[f"ssd_{mode}_{kind}"] / med[f"plain_{kind}"],
                "median_of_round_ratios": statistics.median(x / y for x, y in zip(a, b, strict=True)),
                "goal": 1.3,
            }
    retrain = []
    for _ in range(retrain_repeats):
        with tempfile.TemporaryDirectory() as tmp:
            method = Retrain()
            method.unlearn(copy.deepcopy(model), dataclasses.replace(task, work_dir=Path(tmp)))
            retrain.append(float(method.info["method_seconds"]))
    if retrain:
        out["retrain_seconds"] = retrain
        for n in names:
            if n.startswith("ssd"):
                out[f"retrain_over_{n}"] = statistics.median(retrain) / med[n]
    return out


def speed_markdown(sp: dict) -> str:
    lines = ["| variant | median s | every round (s) |", "|---|---|---|"]
    for n, v in sp["seconds"].items():
        lines.append(f"| {n} | {sp['median'][n]:.4f} | {' '.join(f'{t:.4f}' for t in v)} |")
    lines += ["", "| ratio | of medians | median of rounds | goal |", "|---|---|---|---|"]
    for k, v in sp.items():
        if k.endswith("_over_plain"):
            lines.append(f"| {k} | {v['ratio_of_medians']:.2f} | {v['median_of_round_ratios']:.2f} | <= {v['goal']} |")
        elif k.startswith("retrain_over_"):
            lines.append(f"| {k} | {v:.1f} | – | – |")
    return "\n".join(lines) + "\n"


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
    ap.add_argument(
        "--classes",
        default="3",
        help="forget.classes for forget=class, e.g. 3 or 3,7 (speed: the first, always a class)",
    )
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides, e.g. unlearn_method.importance=per_sample")
    ap.add_argument("--out", default="/tmp/unlearn_bench")
    ap.add_argument("--reference", default=None, help="an earlier retrain run dir (same split): reuse it")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every method (1: stable under load)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved speed rounds (medians reported)")
    ap.add_argument("--retrain-repeats", type=int, default=1, help="timed retrain runs for the retrain / SSD ratio")
    ap.add_argument("--batch-size", type=int, default=64, help="SSD's importance batch size (its default)")
    ap.add_argument("--speed-only", action="store_true", help="only the speed rounds (no method table)")
    args = ap.parse_args(argv)
    import os

    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from cl.utils.atomic import write_text

    sp = speed(args.checkpoint, int(args.classes.split(",")[0]), args.repeats, args.batch_size, args.retrain_repeats)
    sp.update(threads=args.threads, loadavg_before=load_before, loadavg_after=os.getloadavg())
    text = speed_markdown(sp) + "\n" + json.dumps({k: sp[k] for k in ("threads", "loadavg_before", "loadavg_after")})
    write_text(out / "speed.json", json.dumps(sp, indent=1))
    write_text(out / "speed.md", text + "\n")
    print(text, flush=True)
    if args.speed_only or not args.methods:
        return 0
    base = [f"checkpoint={args.checkpoint}", f"forget={args.forget}", *args.extra]
    if args.forget == "class":
        base.append(f"forget.classes=[{args.classes}]")
    if args.reference:
        rows = {"retrain": json.loads((Path(args.reference) / "unlearn_report.json").read_text())}
    else:
        rows = {"retrain": run_one("retrain", base, out, [])}
    ref = [f"reference={args.reference or out / 'retrain'}"]
    for name in (m for m in args.methods.split(",") if m and m != "retrain"):
        rows[name] = run_one(name, base, out, ref)
    write_text(out / "table.md", markdown(rows))
    write_text(out / "table.json", json.dumps({"rows": rows}, indent=1, default=str))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
