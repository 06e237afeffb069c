"""The 2x2 SEFE table of experiments/sefe_digits/README.md from runs' metrics.json (cl/methods/instruction.py).

    python experiments/sefe_digits/table.py RUN_DIR [RUN_DIR ...]

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
    print(HEADER)
    for arg in sys.argv[1:]:
        print(row(Path(arg)))
