"""``python -m experiments.methods_digits.table SWEEP_DIR/aggregate/summary.csv``: the README's table of this study
(mean ± std over seeds of A_T, forgetting, BWT, training seconds and FLOPs per method, best A_T first) from the
summary that ``python -m experiments.aggregate SWEEP_DIR`` writes."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

COLUMNS = (("avg_acc", "A_T (%)", 100.0, 1), ("forgetting", "forgetting (%)", 100.0, 1), ("bwt", "BWT (%)", 100.0, 1),
           ("seconds", "train s", 1.0, 0), ("flops", "train TFLOPs", 1e-12, 2))  # fmt: skip


def _cell(row: dict[str, str], key: str, scale: float, digits: int) -> str:
    mean, std = row.get(f"{key}_mean", ""), row.get(f"{key}_std", "")
    if not mean:
        return "–"
    text = f"{float(mean) * scale:.{digits}f}"
    return text + (f" ± {float(std) * scale:.{digits}f}" if std else "")


def table(summary_csv: Path) -> str:
    rows = list(csv.DictReader(summary_csv.open()))
    rows.sort(key=lambda r: -float(r.get("avg_acc_mean") or 0.0))
    lines = ["| method | seeds | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for row in rows:
        name = row.get("methods_digits/method") or row["method"]
        cells = [_cell(row, key, scale, digits) for key, _, scale, digits in COLUMNS]
        lines.append(f"| `{name}` | {row['n_runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table(Path(sys.argv[1])))
