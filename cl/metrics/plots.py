"""Heatmap of the accuracy matrix R (R[t][j] = accuracy on experience j after training through experience t).

matplotlib is imported lazily and only through its object-oriented API with the Agg canvas, so plotting never changes
the global pyplot backend and importing this module stays cheap. The PNG is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cl.metrics.matrix import ArrayLike, validate_matrix
from cl.utils.atomic import write_with


def plot_acc_matrix(R: ArrayLike, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write a heatmap of ``R`` (percent, one decimal in every cell) to ``path`` as PNG and return the path.

    ``R`` may be partial (rows 0..t of a T-column matrix, during a run). Cells above the diagonal (experiences not yet
    trained on) are drawn like the others; the diagonal is outlined.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    arr = validate_matrix(R, partial=True)
    rows, cols = arr.shape
    fig = Figure(figsize=(max(5.0, 0.6 * cols + 2.0), max(4.0, 0.5 * rows + 1.5)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(arr * 100.0, vmin=0.0, vmax=100.0, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    font = 9 if cols <= 10 else 7
    for t in range(rows):
        for j in range(cols):
            value = arr[t, j] * 100.0
            color = "black" if value > 60.0 else "white"
            ax.text(j, t, f"{value:.1f}", ha="center", va="center", color=color, fontsize=font)
        ax.add_patch(Rectangle((t - 0.5, t - 0.5), 1.0, 1.0, fill=False, edgecolor="red", linewidth=1.2))
    ax.set_xticks(np.arange(cols))
    ax.set_yticks(np.arange(rows))
    ax.set_xlabel("evaluated on experience j")
    ax.set_ylabel("after training on experience t")
    ax.set_title(title or f"Accuracy (%), {rows}/{cols} experiences trained", fontsize=10)
    fig.tight_layout()

    target = Path(path)
    write_with(target, lambda tmp: fig.savefig(tmp, format="png"))
    return target
