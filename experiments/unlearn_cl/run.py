"""Study unlearn_cl: forgetting one class of a continual-learning checkpoint with every unlearning method, against
``retrain`` (the same recipe replayed on the retain set) on the same split.

    python experiments/unlearn_cl/run.py --checkpoint RUN_DIR --name er --classes 0,5,9

For every class: ``retrain`` first (the gold standard, ``unlearn_method=retrain``), then every other method with
``reference=<the retrain run>`` (``python -m unlearn.run``'s pipeline, in-process, same code path). Writes
``<out>/<name>/table.md`` / ``.json``: per method and class the forget-test and retain-test accuracy before → after,
the entropy MIA on the forget set, the seconds of the method's own work, the gap of the forget-test accuracy to
retrain's, and the accuracy of every experience before → after. A run directory that already holds a report is
reused (an interrupted study resumes). Results: experiments/unlearn_cl/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments.unlearn_native.run import compose  # noqa: E402

METHODS = "retrain,ssd,lfssd,iau,finetune,gradient_ascent,random_label,bad_teacher"
# "<method>:auto" runs the method with its strength calibrated on held-out classes (unlearn/calibrate.py)
AUTO = {"ssd": "unlearn_method.alpha=auto", "lfssd": "unlearn_method.alpha=auto", "iau": "unlearn_method.lr=auto"}


def forget_one(checkpoint: str, method: str, c: int, out: Path, extra: list[str], tag: str = "") -> dict:
    from unlearn.pipeline import run_unlearning

    run_dir = out / f"{method.replace(':', '_')}{tag}-class{c}"
    if (run_dir / "unlearn_report.json").is_file():
        return json.loads((run_dir / "unlearn_report.json").read_text())
    name, _, tag = method.partition(":")
    if tag not in ("", "auto") or (tag and name not in AUTO):
        raise SystemExit(f"--methods: {method!r}; allowed: a method, or {sorted(AUTO)} with ':auto'")
    ov = [f"checkpoint={checkpoint}", f"unlearn_method={name}", f"forget.classes=[{c}]", "eval.probe=false"]
    ov += [AUTO[name]] if tag else []
    if method != "retrain" and (out / f"retrain-class{c}" / "unlearn_report.json").is_file():
        ov.append(f"reference={out / f'retrain-class{c}'}")
    return run_unlearning(compose([*ov, *extra]), run_dir, [*ov, *extra])


def row(method: str, c: int, r: dict) -> dict:
    info = r.get("method_info") or {}
    return {
        "method": method,
        "class": c,
        "forget_test": [r["original_forget_test_acc"], r["forget_test_acc"]],
        "retain_test": [r["original_retain_test_acc"], r["retain_test_acc"]],
        "mia_entropy": [r.get("original_mia_entropy"), r.get("mia_entropy")],
        "per_task": [r["original_per_task_acc"], r["per_task_acc"]],
        "seconds": r["seconds"],
        "gap_forget_test": r.get("gap_to_reference_forget_test_acc"),
        "strength": info.get("alpha", info.get("lr")),
        "selected_fraction": info.get("selected_fraction"),
        "lambda": info.get("lambda"),
        "auto": {k: (info.get("auto") or {}).get(k) for k in ("classes", "met_criterion")} if "auto" in info else None,
    }


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def markdown(name: str, rows: list[dict]) -> str:
    head = (
        f"**{name}**\n\n| method | class | forget-test | retain-test | drop (pts) | gap to retrain | MIA entropy | s | "
        "per experience before → after |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        (f0, f1), (r0, r1), (m0, m1), (p0, p1) = r["forget_test"], r["retain_test"], r["mia_entropy"], r["per_task"]
        gap = "–" if r["gap_forget_test"] is None else f"{r['gap_forget_test']:+.2f}"
        per = " ".join(_f(v) for v in p0) + " → " + " ".join(_f(v) for v in p1)
        lines.append(
            f"| {r['method']} | {r['class']} | {f0:.2f} → {f1:.2f} | {r0:.3f} → {r1:.3f} | {100 * (r0 - r1):+.1f} | "
            f"{gap} | {_f(m0)} → {_f(m1)} | {r['seconds']:.1f} | {per} |"
        )
    return head + "\n".join(lines) + "\n"


def ordered(rows: list[dict], show: str | None = None) -> list[dict]:
    """Rows by class, then method in first-appearance order; only the methods in ``show`` (comma-separated) if set."""
    names = list(dict.fromkeys(r["method"] for r in rows))
    keep = show.split(",") if show else names
    rank = {m: i for i, m in enumerate(keep)}
    return sorted((r for r in rows if r["method"] in rank), key=lambda r: (r["class"], rank[r["method"]]))


def strengths(rows: list[dict]) -> str:
    """The strengths used (alpha or lr, and lambda when set) with the classes that used each: ``2 λ1 (0-9)``."""
    used: dict[str, list[int]] = {}
    for r in rows:
        if r.get("strength") is None:
            continue
        lam = "" if r.get("lambda") is None else f" λ{r['lambda']:g}"
        used.setdefault(f"{r['strength']:g}{lam}", []).append(r["class"])
    return "; ".join(f"{k} ({','.join(map(str, v))})" for k, v in used.items()) or "–"


def summary(rows: list[dict]) -> str:
    """Per method: the classes whose forget-test is within 10 points of retrain's (issue 17's goal for SSD), the mean
    retain-test drop, the mean seconds; and the classes that miss (with SSD's selected fraction)."""
    out = "\n| method | forget-test within 10 pts of retrain | mean retain drop (pts) | mean s | strength (classes) | "
    out += "misses (class: gap, retain drop in pts, selected fraction) |\n|---|---|---|---|---|---|\n"
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        if method == "retrain":
            ok, misses = len(mine), []
        else:
            misses = [r for r in mine if r["gap_forget_test"] is None or abs(r["gap_forget_test"]) > 0.10]
            ok = len(mine) - len(misses)
        drop = 100 * sum(r["retain_test"][0] - r["retain_test"][1] for r in mine) / len(mine)
        secs = sum(r["seconds"] for r in mine) / len(mine)
        miss = "; ".join(
            f"{r['class']}: {_f(r['gap_forget_test'])}, {100 * (r['retain_test'][0] - r['retain_test'][1]):+.0f}"
            + ("" if r["selected_fraction"] is None else f", {r['selected_fraction']:.4f}")
            for r in misses
        )
        out += f"| {method} | {ok}/{len(mine)} | {drop:+.1f} | {secs:.1f} | {strengths(mine)} | {miss or '–'} |\n"
    return out


def calibration_tables(runs: Path, method: str) -> str:
    """The ``alpha=auto`` calibration tables of ``method``'s runs, one per distinct set of calibration classes: per
    grid point the mean held-out forget-test / retain drop and each class's, and which forgotten classes used it."""
    tables: dict[tuple, tuple[dict, list[int]]] = {}
    for rd in sorted(runs.glob(f"{method.replace(':', '_')}-class*")):  # a --tag variant: pass "ssd:auto<tag>"
        if not (rd / "unlearn_report.json").is_file():
            continue
        r = json.loads((rd / "unlearn_report.json").read_text())
        auto = r["method_info"]["auto"]
        key = tuple(auto["classes"])
        tables.setdefault(key, (auto, []))[1].append(int(rd.name.rsplit("class", 1)[1]))
    out = ""
    for key, (auto, forgotten) in tables.items():
        out += f"\ncalibration classes {list(key)} (forgotten classes {sorted(forgotten)}; criterion met: "
        out += f"{auto['met_criterion']}, chosen {auto['chosen']})\n\n| value | lambda | mean forget / drop (pts) | "
        out += " | ".join(f"class {c}" for c in key) + " |\n|" + "---|" * (3 + len(key)) + "\n"
        for t in auto["table"]:
            per = " | ".join(f"{p['forget']:.2f} / {100 * p['retain_drop']:+.1f}" for p in t["per_class"])
            out += f"| {t['value']:g} | {t['lambda']:g} | {t['forget']:.3f} / {100 * t['retain_drop']:+.1f} | {per} |\n"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a cl.run run directory")
    ap.add_argument("--name", required=True, help="table name (e.g. er, finetune, coda_prompt)")
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--methods", default=METHODS, help="retrain first: the others are compared with it")
    ap.add_argument("--out", default=str(ROOT / "logs" / "studies" / "unlearn_cl"))
    ap.add_argument("--extra", nargs="*", default=[], help="more unlearn.run overrides (every method)")
    ap.add_argument("--tag", default="", help="suffix of the non-retrain methods' names and run dirs (a variant)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true", help="print the tables of an earlier run's table.json")
    ap.add_argument("--show", default=None, help="with --table-only: only these methods (comma-separated)")
    ap.add_argument("--calibration", default=None, help="with --table-only: print this ':auto' method's calibrations")
    args = ap.parse_args(argv)
    out = Path(args.out) / args.name
    if args.table_only:
        rows = json.loads((out / "table.json").read_text())
        print(markdown(args.name, ordered(rows, args.show)) + summary(ordered(rows, args.show)))
        if args.calibration:
            print(calibration_tables(out / "runs", args.calibration))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    from cl.utils.atomic import write_text

    methods = args.methods.split(",")
    # rows of earlier invocations (other methods on the same checkpoint) are kept; a rerun row replaces its own
    rows = json.loads((out / "table.json").read_text()) if (out / "table.json").is_file() else []
    for c in (int(v) for v in args.classes.split(",")):
        for method in methods:
            tag = "" if method == "retrain" else args.tag
            new = row(method + tag, c, forget_one(args.checkpoint, method, c, out / "runs", args.extra, tag))
            rows = [r for r in rows if (r["method"], r["class"]) != (new["method"], c)] + [new]
            write_text(out / "table.md", markdown(args.name, ordered(rows)) + summary(ordered(rows)))  # partial: kept
            write_text(out / "table.json", json.dumps(rows, indent=1))
    print(markdown(args.name, ordered(rows)) + summary(ordered(rows)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
