"""One-screen run summary: the accuracy matrix (percent, one decimal) and the metrics of :mod:`cl.metrics.report`.

rich is imported lazily. :func:`render_summary` returns plain text (for logs); :func:`print_summary` also prints the
styled version to a console.
"""

from __future__ import annotations

import io
from typing import Any

METRIC_LABELS: tuple[tuple[str, str], ...] = (
    ("avg_acc", "final average accuracy A_T"),
    ("avg_inc_acc", "average incremental accuracy"),
    ("forgetting", "average forgetting F_T"),
    ("bwt", "backward transfer BWT"),
    ("fwt", "forward transfer FWT"),
    ("plasticity", "plasticity (diagonal mean)"),
    ("forgetting_fn", "CODA-Prompt F_N (per-step drop)"),
    ("avg_acc_task_aware", "task-aware final average accuracy"),
    ("forgetting_task_aware", "task-aware average forgetting"),
)


def _pct(value: Any, decimals: int) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):.{decimals}f}"


def _renderable(metrics: dict[str, Any], title: str, extra: dict[str, Any] | None) -> Any:
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    if not isinstance(metrics, dict) or "acc_matrix" not in metrics:
        raise ValueError("metrics must be the dict returned by cl.metrics.compute_metrics (missing key 'acc_matrix')")
    R = metrics["acc_matrix"]
    cols = len(R[0]) if R else 0
    matrix = Table(title=escape("accuracy matrix R[t][j] (%)"))
    matrix.add_column("after", justify="right", style="bold")
    for j in range(cols):
        matrix.add_column(f"exp {j}", justify="right")
    for t, row in enumerate(R):
        cells = [_pct(v, 1) for v in row]
        if t < len(cells):
            cells[t] = f"[bold]{cells[t]}[/bold]"
        matrix.add_row(str(t), *cells)

    scores = Table(title="metrics (%)")
    scores.add_column("metric")
    scores.add_column("value", justify="right")
    for key, label in METRIC_LABELS:
        if key in metrics:
            scores.add_row(label, _pct(metrics[key], 2))
    for key, value in (extra or {}).items():
        scores.add_row(escape(str(key)), escape(f"{value:.4g}" if isinstance(value, float) else str(value)))
    trained = metrics.get("experiences_trained", len(R))
    total = metrics.get("num_experiences", cols)
    return Panel(Group(matrix, scores), title=escape(f"{title} ({trained}/{total} experiences trained)"), expand=False)


def _width(metrics: dict[str, Any]) -> int:
    cols = len(metrics.get("acc_matrix", [[0]])[0] or [0])
    return max(100, 10 + 9 * cols)


def render_summary(metrics: dict[str, Any], title: str, extra: dict[str, Any] | None = None) -> str:
    """Plain-text summary (no colour codes): matrix in percent with one decimal, metrics in percent, ``extra`` rows."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=_width(metrics), color_system=None, force_terminal=False, legacy_windows=False)
    console.print(_renderable(metrics, title, extra))
    return buf.getvalue()


def print_summary(
    metrics: dict[str, Any], title: str, extra: dict[str, Any] | None = None, console: Any | None = None
) -> str:
    """Print the styled summary to ``console`` (a ``rich.console.Console``; stdout by default); return plain text."""
    from rich.console import Console

    console = console or Console()
    console.print(_renderable(metrics, title, extra))
    return render_summary(metrics, title, extra)
