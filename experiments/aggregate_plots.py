"""The pictures of a sweep, written by ``python -m experiments.aggregate`` beside its tables (one figure each):

- ``tradeoff.png``: final average accuracy A_T against forgetting, one point per group (method and setting) at the mean
  over its seeds, with the sample std over seeds as error bars in both directions;
- ``accuracy_curves.png``: A_t (the mean accuracy over experiences 0..t after training experience t, the diagonal-and-
  below mean of row t of the accuracy matrix) against t, mean over seeds with std bars, one line per group;
- ``acc_matrices.png``: every group's element-wise mean accuracy matrix side by side on one colour scale.

Input: ``{group label: [metrics.json dict of each complete run]}``; groups whose matrices have different sizes are
drawn with their own number of experiences. matplotlib's object-oriented API with the Agg canvas (no pyplot state);
files are written atomically (:mod:`cl.utils.atomic`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cl.utils.atomic import write_with

Runs = Mapping[str, Sequence[Mapping[str, Any]]]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def accuracy_curve(matrix: Sequence[Sequence[float]]) -> list[float]:
    """A_t = mean_{j <= t} R[t][j] for every trained row t."""
    return [statistics.fmean(row[: t + 1]) for t, row in enumerate(matrix)]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def tradeoff_points(runs: Runs) -> list[tuple[str, float, float, float, float, int]]:
    """``(label, A_T mean, A_T std, forgetting mean, forgetting std, n)`` in percent, per group with both metrics."""
    points = []
    for label, members in runs.items():
        pairs = [(float(m["avg_acc"]), float(m["forgetting"])) for m in members if _number(m.get("avg_acc"))
                 and _number(m.get("forgetting"))]  # fmt: skip
        if pairs:
            (acc, acc_sd), (fgt, fgt_sd) = _mean_std([a for a, _ in pairs]), _mean_std([f for _, f in pairs])
            points.append((label, acc * 100, acc_sd * 100, fgt * 100, fgt_sd * 100, len(pairs)))
    return points


def curve_stats(runs: Runs) -> dict[str, tuple[list[float], list[float], int]]:
    """``label -> (mean A_t, std A_t, n)`` in percent over the experiences every run of the group trained."""
    out = {}
    for label, members in runs.items():
        curves = [accuracy_curve(m["acc_matrix"]) for m in members if m.get("acc_matrix")]
        if curves:
            length = min(len(c) for c in curves)
            stats = [_mean_std([c[t] * 100 for c in curves]) for t in range(length)]
            out[label] = ([m for m, _ in stats], [s for _, s in stats], len(curves))
    return out


def mean_matrices(runs: Runs) -> list[tuple[str, np.ndarray, int]]:
    """``(label, element-wise mean matrix in percent, n)`` per group whose runs' matrices share one shape."""
    mats = []
    for label, members in runs.items():
        arrs = [np.asarray(m["acc_matrix"], dtype=float) for m in members if m.get("acc_matrix")]
        if arrs and len({a.shape for a in arrs}) == 1:
            mats.append((label, np.mean(arrs, axis=0) * 100, len(arrs)))
    return mats


def plot_tradeoff(runs: Runs, path: Path) -> Path | None:
    """A_T (``avg_acc``) vs ``forgetting`` per group, mean ± std over seeds; None when no run has both."""
    points = tradeoff_points(runs)
    if not points:
        return None
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, acc, acc_sd, fgt, fgt_sd, n) in enumerate(points):
        color = f"C{i % 10}"
        ax.errorbar(fgt, acc, xerr=fgt_sd, yerr=acc_sd, fmt="o", color=color, capsize=3, label=f"{label} (n={n})")
        ax.annotate(label, (fgt, acc), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_xlabel("forgetting (%), lower is better")
    ax.set_ylabel("final average accuracy A_T (%)")
    ax.set_title("A_T vs forgetting: mean ± std over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_curves(runs: Runs, path: Path) -> Path | None:
    """A_t after each experience per group, mean ± std over seeds; None when no run has a matrix."""
    stats = curve_stats(runs)
    if not stats:
        return None
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, (mean, std, n)) in enumerate(stats.items()):
        ax.errorbar(
            np.arange(1, len(mean) + 1), mean, yerr=std, marker="o", markersize=3, capsize=2, color=f"C{i % 10}",
            label=f"{label} (n={n})",
        )  # fmt: skip
    ax.set_xlabel("experiences trained (t)")
    ax.set_ylabel("A_t: mean accuracy over experiences seen (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy after each experience: mean ± std over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_matrices(runs: Runs, path: Path) -> Path | None:
    """Every group's mean accuracy matrix side by side (percent); None when no run has a matrix."""
    mats = mean_matrices(runs)
    if not mats:
        return None
    cols = min(4, len(mats))
    rows = math.ceil(len(mats) / cols)
    size = max(a.shape[1] for _, a, _ in mats)
    cell = max(2.6, 0.45 * size + 1.0)
    fig = _figure(cell * cols + 1.0, cell * rows + 0.4)
    image = None
    for k, (label, arr, n) in enumerate(mats):
        ax = fig.add_subplot(rows, cols, k + 1)
        image = ax.imshow(arr, vmin=0.0, vmax=100.0, cmap="viridis", aspect="auto")
        if arr.shape[1] <= 10:
            for t in range(arr.shape[0]):
                for j in range(arr.shape[1]):
                    color = "black" if arr[t, j] > 60.0 else "white"
                    ax.text(j, t, f"{arr[t, j]:.0f}", ha="center", va="center", color=color, fontsize=6)
        ax.set_title(f"{label} (n={n})", fontsize=8)
        ax.set_xticks(np.arange(arr.shape[1]))
        ax.set_yticks(np.arange(arr.shape[0]))
        ax.tick_params(labelsize=6)
        ax.set_xlabel("evaluated on j", fontsize=7)
        ax.set_ylabel("after t", fontsize=7)
    fig.colorbar(image, ax=fig.axes, label="mean accuracy (%)", shrink=0.8)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))  # no tight_layout: the shared colorbar spans axes
    return path


def write_sweep_plots(runs: Runs, out_dir: Path) -> list[Path]:
    """The three pictures of a sweep into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    made = [
        plot_tradeoff(runs, out_dir / "tradeoff.png"),
        plot_curves(runs, out_dir / "accuracy_curves.png"),
        plot_matrices(runs, out_dir / "acc_matrices.png"),
    ]
    return [p for p in made if p is not None]
