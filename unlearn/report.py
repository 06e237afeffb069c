"""Writing an unlearning run's report: ``unlearn_report.json`` (every key), ``unlearn_report.csv`` (one row per metric:
original, unlearned, reference, gap; one row per experience for ``per_task_acc``) and ``unlearn_report.png`` (bars
of the scalar metrics before / after unlearning and of the reference). All files are written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearn.evaluate import SCALAR_KEYS


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v)


def report_rows(report: dict[str, Any], reference: dict[str, Any] | None) -> list[list[str]]:
    ref = reference or {}
    rows = [["metric", "original", "unlearned", "reference", "gap_to_reference"]]
    for k in SCALAR_KEYS:
        if k in report:
            rows.append([k, *map(_fmt, (report.get(f"original_{k}"), report[k], ref.get(k)))])
            rows[-1].append(_fmt(report.get(f"gap_to_reference_{k}")))
    before, after = report.get("original_per_task_acc") or [], report.get("per_task_acc") or []
    ref_row = ref.get("per_task_acc") or [None] * len(after)
    for j, (b, a) in enumerate(zip(before, after, strict=True)):
        r = ref_row[j] if j < len(ref_row) else None
        rows.append([f"task_{j}_acc", _fmt(b), _fmt(a), _fmt(r), _fmt(None if r is None else a - r)])
    rows.append(["seconds", "", _fmt(report.get("seconds")), _fmt(ref.get("seconds")), ""])
    return rows


def plot(report: dict[str, Any], reference: dict[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cl.utils.atomic import write_with

    keys = [k for k in SCALAR_KEYS if report.get(k) is not None]
    series = [
        ("original", [report.get(f"original_{k}") for k in keys]),
        (report.get("method", "unlearned"), [report[k] for k in keys]),
    ]
    if reference is not None:
        series.append((f"reference ({reference.get('method', '?')})", [reference.get(k) for k in keys]))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys)), 3.6))
    width = 0.8 / len(series)
    for s, (label, vals) in enumerate(series):
        ax.bar(np.arange(len(keys)) + s * width, [np.nan if v is None else v for v in vals], width, label=label)
    ax.set_xticks(np.arange(len(keys)) + width * (len(series) - 1) / 2, keys, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(f"{report.get('method')} · forget={report.get('forget')}", fontsize=9)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_report(run_dir: Path, report: dict[str, Any], reference: dict[str, Any] | None) -> None:
    from cl.utils.atomic import write_json, write_text

    run_dir = Path(run_dir)
    write_json(run_dir / "unlearn_report.json", report)
    write_text(run_dir / "unlearn_report.csv", "".join(",".join(r) + "\n" for r in report_rows(report, reference)))
    plot(report, reference, run_dir / "unlearn_report.png")
