"""``python -m experiments.gcab_digits.table LOG_DIR``: the README's ladder table of this study (mean ± std over the
seeds of A_T, average incremental accuracy, forgetting and the task-aware A_T per method) from the runs
``LOG_DIR/<method>_s<seed>/metrics.json`` that the README's command writes."""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

METHODS = ("finetune", "lwf", "ewc", "gcab", "gcab_nocfdc", "gcab_gatelr", "gcab_nocfdc_gatelr", "gcab_cosine")
METHODS += ("finetune_aug", "gcab_aug")  # data.source.augment=true
METHODS += ("finetune_e50", "lwf_e50", "ewc_e50", "gcab_e50", "gcab_nocfdc_e50")  # trainer.max_epochs=50
COLUMNS = (("avg_acc", "A_T"), ("avg_inc_acc", "A_inc"), ("forgetting", "forgetting"),
           ("avg_acc_task_aware", "task-aware A_T"))  # fmt: skip


def _cell(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def table(log_dir: Path) -> str:
    lines = ["| method | seeds | " + " | ".join(c[1] + " (%)" for c in COLUMNS) + " | A_T per seed |"]
    lines.append("|---" * (len(COLUMNS) + 3) + "|")
    for name in METHODS:
        paths = sorted(log_dir.glob(f"{name}_s*/metrics.json"))
        runs = [json.loads(p.read_text()) for p in paths if re.fullmatch(rf"{name}_s\d+", p.parent.name)]
        runs = [r for r in runs if r.get("complete")]
        if not runs:
            continue
        cells = [_cell([r[key] for r in runs]) for key, _ in COLUMNS]
        per_seed = ", ".join(f"{100 * r['avg_acc']:.1f}" for r in sorted(runs, key=lambda r: r["seed"]))
        lines.append(f"| `{name}` | {len(runs)} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table(Path(sys.argv[1] if len(sys.argv) > 1 else "logs/gcab_digits")))
