"""Writing an unlearning run's report: ``unlearn_report.json`` (every key), ``unlearn_report.csv`` (one row per metric:
original, unlearned, reference, gap; one row per experience for ``per_task_acc``), ``unlearn_report.png`` (bars
of the scalar metrics before / after unlearning and of the reference) and ``unlearn_per_task.png`` (heatmap of every
experience's accuracy before / after unlearning and of the reference). All files are written atomically."""

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


def per_task_rows(report: dict[str, Any], reference: dict[str, Any] | None) -> tuple[list[str], list[list[float]]]:
    """The rows of the per-experience heatmap: accuracy of every experience before and after unlearning (and of the
    reference run); an experience without a value (another stream length) is NaN."""
    rows = [
        ("original", report.get("original_per_task_acc")),
        (report.get("method", "unlearned"), report.get("per_task_acc")),
    ]
    if reference is not None:
        rows.append((f"reference ({reference.get('method', '?')})", reference.get("per_task_acc")))
    n = max(len(v or []) for _, v in rows)
    return [r for r, _ in rows], [[float(x) for x in (v or [])] + [float("nan")] * (n - len(v or [])) for _, v in rows]


def plot_per_task(report: dict[str, Any], reference: dict[str, Any] | None, path: Path) -> list[list[float]]:
    """``unlearn_per_task.png``: heatmap of :func:`per_task_rows`, each cell annotated; returns the plotted matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cl.utils.atomic import write_with

    labels, matrix = per_task_rows(report, reference)
    m = np.array(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * m.shape[1] + 2.5), 0.6 * m.shape[0] + 1.4))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(m.shape[1]), [f"exp {j}" for j in range(m.shape[1])], fontsize=8)
    ax.set_yticks(range(m.shape[0]), labels, fontsize=8)
    forgotten = report.get("forget_classes") or []
    ax.set_title(f"accuracy per experience · forget={report.get('forget')} {forgotten or ''}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return matrix


def write_report(run_dir: Path, report: dict[str, Any], reference: dict[str, Any] | None) -> None:
    from cl.utils.atomic import write_json, write_text

    run_dir = Path(run_dir)
    write_json(run_dir / "unlearn_report.json", report)
    write_text(run_dir / "unlearn_report.csv", "".join(",".join(r) + "\n" for r in report_rows(report, reference)))
    plot(report, reference, run_dir / "unlearn_report.png")
    if report.get("per_task_acc"):
        plot_per_task(report, reference, run_dir / "unlearn_per_task.png")
