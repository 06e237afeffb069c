"""The 2x2 SEFE table of experiments/sefe_digits/README.md from runs' metrics.json (cl/methods/instruction.py).

    python experiments/sefe_digits/table.py RUN_DIR [RUN_DIR ...]
    python experiments/sefe_digits/table.py --mean RUN_DIR [RUN_DIR ...]   # one row per cell: mean ± std over seeds

One row per run: its ``method.reg_weight`` and ``data.asd.fraction`` (from config.yaml), MFN / MAA / BWT, and on the
old tasks (all but the last) after the last task: format-failure rate (superficial forgetting), wrong-but-well-formed
rate (essential forgetting), their change since each task was learned, and the accuracy among well-formed answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml


def numbers(run: Path) -> tuple[tuple[float, float], dict[str, float]]:
    """``((reg_weight, asd fraction), {column: percent})`` of one run, for the per-cell means over seeds."""
    m = json.loads((run / "metrics.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    s = {k: np.asarray(v) for k, v in m["style_matrices"].items()}
    t = m["experiences_trained"] - 1
    old = slice(0, t)
    values = {k.upper(): 100 * m[k] for k in ("mfn", "maa", "bwt")}
    values["old-task format failure"] = 100 * s["format_failure"][t, old].mean()
    values["old-task wrong well-formed"] = 100 * s["wrong_well_formed"][t, old].mean()
    values["old-task well-formed acc"] = 100 * s["well_formed_accuracy"][t, old].mean()
    return (float(cfg["method"]["reg_weight"]), float(cfg["data"]["asd"]["fraction"])), values


def mean_table(runs: list[Path]) -> str:
    """One row per (reg_weight, asd) cell: mean ± std (ddof 1) over its runs (seeds)."""
    cells: dict[tuple[float, float], list[dict[str, float]]] = {}
    for run in runs:
        key, values = numbers(run)
        cells.setdefault(key, []).append(values)
    columns = list(next(iter(cells.values()))[0])
    lines = ["| reg_weight | asd | seeds | " + " | ".join(columns) + " |", "|---" * (len(columns) + 3) + "|"]
    for (reg, asd), rows in sorted(cells.items()):
        stats = []
        for c in columns:
            v = np.array([r[c] for r in rows])
            stats.append(f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}")
        lines.append(f"| {reg:g} | {asd:g} | {len(rows)} | " + " | ".join(stats) + " |")
    return "\n".join(lines)


def row(run: Path) -> str:
    m = json.loads((run / "metrics.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    s = {k: np.asarray(v) for k, v in m["style_matrices"].items()}
    t = m["experiences_trained"] - 1
    old = slice(0, t)
    cells = [
        f"{cfg['method']['reg_weight']:g}",
        f"{cfg['data']['asd']['fraction']:g}",
        str(cfg["seed"]),
        *(f"{100 * m[k]:.1f}" for k in ("mfn", "maa", "bwt")),
        f"{100 * s['format_failure'][t, old].mean():.1f}",
        f"{100 * m['superficial_forgetting']:+.1f}",
        f"{100 * s['wrong_well_formed'][t, old].mean():.1f}",
        f"{100 * m['essential_forgetting']:+.1f}",
        f"{100 * s['well_formed_accuracy'][t, old].mean():.1f}",
        " ".join(f"{100 * v:.0f}" for v in s["accuracy"][t, : t + 1]),
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| reg_weight | asd | seed | MFN | MAA | BWT | old-task format failure | superficial change | old-task wrong "
    "well-formed | essential change | old-task well-formed acc | final accuracy per task |\n" + "|---" * 12 + "|"
)

if __name__ == "__main__":
    if sys.argv[1:2] == ["--mean"]:
        print(mean_table([Path(a) for a in sys.argv[2:]]))
        sys.exit(0)
    print(HEADER)
    for arg in sys.argv[1:]:
        print(row(Path(arg)))
