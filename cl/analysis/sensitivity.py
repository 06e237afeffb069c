"""Module sensitivity from training dynamics (Zhao et al., "Does Continual Learning Equally Forget All Parameters?",
ICML 2023, arXiv 2304.04158; no official code was found: the formula below is our choice).

For each unit m (see :mod:`cl.modules.fpf_select`) with parameters theta_m, snapshots are taken at the end of every
experience t, and the drift between consecutive experiences is

    s_m(t) = || theta_m^(t) - theta_m^(t-1) ||_2^2 / ( (|| theta_m^(t-1) ||_2^2 + eps) * |theta_m| )   (``spec``)

with ``|theta_m|`` the number of parameters. The score is S_m = mean_t s_m(t) over t = 1..T-1 (the spec's
(1/(T-1)) sum_{t=2}^{T}, 0-based here). Other normalisations (config ``normalization``): ``relative`` (without the
division by |theta_m|) and ``per_param`` (||delta||^2 / |theta_m|, not relative). A snapshot of the weights before
the first experience (label -1) is also taken; the drift init -> experience 0 is shown in the table (column
``init->0``) but enters S_m only if ``include_init=True`` (it measures learning, not forgetting); it is the only drift
available to ``auto`` selection after the first experience.

Finding on the default stream (digits, vit_tiny, ER, 5 epochs; ``spec`` normalisation): see the report of issue 5 and
:data:`cl.modules.fpf_select.DEFAULT_VIT`.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cl.modules.fpf_select import method_units
from cl.utils.atomic import write_text, write_with

NORMALIZATIONS = ("spec", "relative", "per_param")


class SensitivityTracker:
    """Snapshots of every unit and the drift between consecutive snapshots (see the module docstring)."""

    def __init__(self, normalization: str = "spec", include_init: bool = False, eps: float = 1e-12) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"sensitivity.normalization={normalization!r}; allowed: {list(NORMALIZATIONS)}")
        self.normalization, self.include_init, self.eps = normalization, include_init, eps
        self.prev: dict[str, torch.Tensor] | None = None  # flattened parameters of each unit at the last snapshot
        self.prev_label: int | None = None
        self.labels: list[tuple[int, int]] = []  # (from, to) of each transition
        self.drift: dict[str, list[float]] = {}
        self.kinds: dict[str, str] = {}
        self.numel: dict[str, int] = {}

    @torch.no_grad()
    def record(self, method: nn.Module, label: int) -> None:
        """Snapshot ``method`` as the state after experience ``label`` (-1: initial weights)."""
        units = method_units(method)
        snap = {n: torch.cat([p.detach().flatten().float().cpu() for _, p in u.params]) for n, u in units.items()}
        if self.prev is not None and self.prev_label != label:
            t = len(self.labels)
            self.labels.append((int(self.prev_label), int(label)))
            for name, now in snap.items():
                before = self.prev.get(name)
                value = float("nan") if before is None or before.shape != now.shape else self._score(before, now)
                self.drift.setdefault(name, [float("nan")] * t).append(value)
        for name, u in units.items():
            self.kinds[name], self.numel[name] = u.kind, u.numel
        self.prev, self.prev_label = snap, int(label)

    def _score(self, before: torch.Tensor, now: torch.Tensor) -> float:
        delta = float((now - before).pow(2).sum())
        if self.normalization in ("spec", "relative"):
            delta /= float(before.pow(2).sum()) + self.eps
        if self.normalization in ("spec", "per_param"):
            delta /= max(before.numel(), 1)
        return delta

    def columns(self) -> list[int]:
        """Indices of the transitions that enter S_m."""
        return [i for i, (a, _) in enumerate(self.labels) if self.include_init or a >= 0]

    def scores(self) -> dict[str, float]:
        """S_m for every unit (mean drift over the counted transitions; the init drift alone if nothing else)."""
        cols = self.columns() or list(range(len(self.labels)))
        out = {}
        for name, values in self.drift.items():
            vals = [values[i] for i in cols if i < len(values) and not math.isnan(values[i])]
            out[name] = sum(vals) / len(vals) if vals else float("nan")
        return out

    def ranking(self) -> list[str]:
        scores = self.scores()
        return sorted((n for n in scores if not math.isnan(scores[n])), key=lambda n: -scores[n])

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "prev": self.prev,
            "prev_label": self.prev_label,
            "labels": [list(x) for x in self.labels],
            "drift": self.drift,
            "kinds": self.kinds,
            "numel": self.numel,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev, self.prev_label = state["prev"], state["prev_label"]
        self.labels = [(int(a), int(b)) for a, b in state["labels"]]
        self.drift = {k: list(v) for k, v in state["drift"].items()}
        self.kinds, self.numel = dict(state["kinds"]), dict(state["numel"])

    # --------------------------------------------------------------------------------------------- reports
    def table(self) -> tuple[list[str], list[list[Any]]]:
        """Header and rows (units sorted by S_m, highest first) of the sensitivity table."""
        heads = [("init" if a < 0 else str(a)) + "->" + str(b) for a, b in self.labels]
        header = ["module", "type", "numel", *heads, "score", "rank"]
        scores = self.scores()
        ranked = self.ranking() + [n for n in self.drift if n not in self.ranking()]
        rows = []
        for rank, name in enumerate(ranked, 1):
            values = self.drift[name] + [float("nan")] * (len(heads) - len(self.drift[name]))
            rows.append([name, self.kinds.get(name, ""), self.numel.get(name, 0), *values, scores[name], rank])
        return header, rows

    def write(self, run_dir: str | Path, plot: bool = True, stem: str = "sensitivity") -> list[Path]:
        """Write ``{stem}.csv`` (and ``{stem}.png``: modules x experiences, log colour scale) to ``run_dir``."""
        header, rows = self.table()
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        for row in rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        out = [Path(run_dir) / f"{stem}.csv"]
        write_text(out[0], buf.getvalue())
        if plot and self.labels:
            out.append(Path(run_dir) / f"{stem}.png")
            plot_sensitivity(header, rows, out[1], self.normalization)
        return out


def plot_sensitivity(header: list[str], rows: list[list[Any]], path: Path, normalization: str) -> None:
    """Heatmap: one row per module (sorted by score), one column per transition between experiences."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    heads = header[3:-2]
    arr = np.array([[float(v) for v in r[3 : 3 + len(heads)]] for r in rows], dtype=float)
    positive = arr[np.isfinite(arr) & (arr > 0)]
    lo, hi = (positive.min(), positive.max()) if positive.size else (1e-12, 1.0)
    arr = np.where(np.isfinite(arr) & (arr > 0), arr, lo)
    fig = Figure(figsize=(max(5.0, 0.9 * len(heads) + 4.0), max(4.0, 0.18 * len(rows) + 1.5)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(arr, aspect="auto", cmap="magma", norm=LogNorm(vmin=lo, vmax=max(hi, lo * 10)))
    fig.colorbar(image, ax=ax, label=f"drift ({normalization})")
    ax.set_xticks(range(len(heads)), heads)
    ax.set_yticks(range(len(rows)), [str(r[0]) for r in rows], fontsize=6 if len(rows) > 30 else 8)
    ax.set_xlabel("between experiences")
    ax.set_title("Module sensitivity (modules sorted by score, highest first)", fontsize=10)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
