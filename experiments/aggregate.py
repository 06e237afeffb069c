"""``python -m experiments.aggregate SWEEP_DIR``: one table over a sweep's runs, mean ± std over seeds.

Groups the *complete* runs (see :mod:`experiments.sweep_runs`) by method and setting (``data.name``,
``scenario.name`` and every resolved config key that differs between runs other than the seed and the keys that do not
change an experiment; matrices of different sizes are never averaged together), and writes into
``SWEEP_DIR/aggregate/`` (or ``--out``):

- ``summary.csv``: one row per group, ``<metric>_mean`` / ``<metric>_std`` for every numeric metric in ``metrics.json``;
- ``summary.md``: the same table as ``mean ± std`` cells, then the list of incomplete runs with their reasons;
- ``runs.csv``: one row per run (complete or not) with its group, seed, status and metrics;
- ``acc_matrix_<group>.png``: the element-wise mean accuracy matrix of each group (``cl.metrics.plots``);
- ``retention_<group>.{csv,png}``: the mean retention curves (±std over seeds) of each group whose runs used
  ``+callbacks=retention`` (``cl.analysis.retention``);
- ``tradeoff.png`` (A_T vs forgetting, std bars), ``accuracy_curves.png`` (A_t after each experience, std bars) and
  ``acc_matrices.png`` (the mean matrices side by side): :mod:`experiments.aggregate_plots`.

std is the sample standard deviation (ddof = 1) over the group's runs; with one run it is empty. A metric absent or
null in some runs is averaged over the runs that have it (the count is in ``<metric>_n`` in the CSV).
Exit status: 0 = table written, 1 = no run folder found, 3 = ``--strict`` and some runs are incomplete.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from experiments.sweep_runs import Run, load_sweep, setting_keys, setting_of

MATRIX_KEYS = {"acc_matrix", "acc_matrix_task_aware", "R0", "R0_task_aware"}
NOT_METRICS = {"seed", "complete", "num_experiences", "experiences_trained"}
FIRST_METRICS = ("avg_acc", "avg_inc_acc", "forgetting", "bwt", "fwt", "plasticity", "seconds", "flops")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def metric_names(runs: list[Run]) -> list[str]:
    """Numeric scalar keys found in any complete run's metrics, the usual ones first."""
    seen = {k for r in runs for k, v in r.metrics.items() if _is_number(v) and k not in NOT_METRICS | MATRIX_KEYS}
    return [k for k in FIRST_METRICS if k in seen] + sorted(seen - set(FIRST_METRICS))


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def group_runs(runs: list[Run], keys: list[str]) -> dict[tuple[str, ...], list[Run]]:
    """``(method, *setting) -> complete runs``, sorted by key."""
    groups: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        if run.complete:
            groups[(run.method, *setting_of(run, keys))].append(run)
    return dict(sorted(groups.items()))


def summarize(groups: dict[tuple[str, ...], list[Run]], keys: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    rows = []
    for group, members in groups.items():
        row: dict[str, Any] = {"method": group[0], **dict(zip(keys, group[1:])), "n_runs": len(members)}
        row["seeds"] = " ".join(str(r.seed) for r in sorted(members, key=lambda r: str(r.seed)))
        for m in metrics:
            vals = [float(r.metrics[m]) for r in members if _is_number(r.metrics.get(m))]
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std(vals)
            row[f"{m}_n"] = len(vals)
        rows.append(row)
    return rows


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def markdown(rows: list[dict[str, Any]], keys: list[str], metrics: list[str], incomplete: list[Run], root: Path) -> str:
    head = ["method", *keys, "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], *(row[k] for k in keys), str(row["n_runs"])]
        cells += [_cell(row[f"{m}_mean"], row[f"{m}_std"]) for m in metrics]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    out = ["# Sweep summary", "", f"`{root}`: mean ± sample std over seeds, complete runs only.", "", *lines, ""]
    out += [f"## Incomplete runs ({len(incomplete)}), not counted", ""]
    out += [f"- `{r.path.relative_to(root)}`: {r.problem}" for r in incomplete] or ["none"]
    return "\n".join(out) + "\n"


def mean_matrix(members: list[Run]) -> list[list[float]] | None:
    """Element-wise mean of the group's accuracy matrices; None when their shapes differ."""
    mats = [r.metrics["acc_matrix"] for r in members]
    n = len(mats[0])
    if any(len(m) != n or any(len(row) != len(m) for row in m) for m in mats):
        return None
    return [[statistics.fmean(m[i][j] for m in mats) for j in range(n)] for i in range(n)]


def slug(parts: tuple[str, ...]) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "__".join(p for p in parts if p)).strip("-") or "all"


def aggregate(sweep_dir: Path, out_dir: Path | None = None, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write every output file; returns ``{"rows", "incomplete", "files", "keys", "metrics"}``."""
    from cl.analysis.retention import write_mean_curves
    from cl.metrics.plots import plot_acc_matrix
    from cl.utils.atomic import write_text
    from experiments.aggregate_plots import write_sweep_plots

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"SWEEP_DIR={str(sweep_dir)!r} is not a directory")
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir / "aggregate"
    runs = load_sweep(sweep_dir)
    if not runs:
        markers = "metrics.json, run_info.json, failed.json or .hydra/config.yaml"
        raise FileNotFoundError(f"no run folder ({markers}) under {sweep_dir}")
    complete = [r for r in runs if r.complete]
    incomplete = [r for r in runs if not r.complete]
    keys = setting_keys(runs, extra_keys)
    metrics = metric_names(complete)
    groups = group_runs(runs, keys)
    rows = summarize(groups, keys, metrics)
    stat_cols = [f"{m}_{s}" for m in metrics for s in ("mean", "std", "n")]
    files = {
        "summary.csv": _csv(rows, ["method", *keys, "n_runs", "seeds", *stat_cols]),
        "summary.md": markdown(rows, keys, metrics, incomplete, sweep_dir),
        "runs.csv": _csv(
            [
                {"run": str(r.path.relative_to(sweep_dir)), "method": r.method, "seed": r.seed,
                 **dict(zip(keys, setting_of(r, keys))), "status": "complete" if r.complete else "incomplete",
                 "problem": r.problem, **{m: r.metrics.get(m) for m in metrics}}
                for r in runs
            ],
            ["run", "method", *keys, "seed", "status", "problem", *metrics],
        ),
    }  # fmt: skip
    written = []
    for name, text in files.items():
        write_text(out_dir / name, text)
        written.append(out_dir / name)
    for group, members in groups.items():
        matrix = mean_matrix(members)
        if matrix is not None:  # always: the matrix size is a setting key when it varies (sweep_runs.setting_keys)
            title = f"{' / '.join(p for p in group if p)}: mean of {len(members)} run(s)"
            written.append(plot_acc_matrix(matrix, out_dir / f"acc_matrix_{slug(group)}.png", title=title))
        title = f"{' / '.join(p for p in group if p)}: retention, mean ± std of {len(members)} run(s)"
        written += write_mean_curves([r.path for r in members], out_dir, slug(group), title)
    labels = {group: " / ".join(p for p in group if p) for group in groups}  # pictures: experiments.aggregate_plots
    written += write_sweep_plots({labels[g]: [r.metrics for r in members] for g, members in groups.items()}, out_dir)
    return {"rows": rows, "incomplete": incomplete, "files": written, "keys": keys, "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder of cl.run (one subfolder per run)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: SWEEP_DIR/aggregate)")
    parser.add_argument("--setting-key", action="append", default=[], help="extra config key defining a setting")
    parser.add_argument("--strict", action="store_true", help="exit 3 when some runs are incomplete")
    args = parser.parse_args(argv)
    try:
        result = aggregate(args.sweep_dir, args.out, tuple(args.setting_key))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print((Path(result["files"][1])).read_text())
    print(f"wrote {len(result['files'])} files to {Path(result['files'][0]).parent}", file=sys.stderr)
    return 3 if args.strict and result["incomplete"] else 0


if __name__ == "__main__":
    sys.exit(main())
