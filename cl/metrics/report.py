"""Run reports from the accuracy matrix: the metrics dict, ``metrics.json``, ``acc_matrix.csv`` and ``acc_matrix.png``.

The formulas and their sources are in :mod:`cl.metrics.matrix`. The engine calls :func:`compute_metrics` and
:func:`write_reports` after every experience with a *partial* matrix (rows 0..t of a T-column matrix). Metrics that
need a square matrix are then computed over the trained prefix ``R[:t+1, :t+1]`` (and ``R0[:t+1]`` for FWT): they are
the values the run would report if it stopped after experience t. The stored ``acc_matrix`` keeps all T columns
(accuracies on experiences not yet trained on included). All files are written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cl.metrics import matrix as M
from cl.utils.atomic import write_json, write_text

METRICS_JSON = "metrics.json"
ACC_MATRIX_CSV = "acc_matrix.csv"
ACC_MATRIX_PNG = "acc_matrix.png"


def compute_metrics(
    R: M.ArrayLike,
    R0: Sequence[float] | np.ndarray | None = None,
    R_taw: M.ArrayLike | None = None,
) -> dict[str, Any]:
    """All metrics of a (possibly partial) accuracy matrix as a JSON-ready dict.

    :param R: the scenario's main matrix (task-agnostic in class-incremental scenarios), ``t+1 <= T`` rows x T columns.
    :param R0: accuracies of the untrained model on each of the T experiences (GEM's ``b``); FWT is None without it.
    :param R_taw: optional task-aware matrix (task id given at test time, where the scenario allows), same shape as R.
    :return: keys ``acc_matrix`` (list of lists), ``num_experiences`` (T), ``experiences_trained`` (t+1), ``avg_acc``,
        ``avg_inc_acc``, ``forgetting``, ``bwt``, ``fwt`` (None when R0 is None), ``plasticity``, ``forgetting_fn``
        (CODA-Prompt's F_N); with R0 also ``R0``; with R_taw also ``acc_matrix_task_aware``, ``avg_acc_task_aware``,
        ``forgetting_task_aware``.
    """
    full = M.validate_matrix(R, "R", partial=True)
    n, T = full.shape
    sq = full[:n, :n]
    out: dict[str, Any] = {
        "acc_matrix": full.tolist(),
        "num_experiences": int(T),
        "experiences_trained": int(n),
        "avg_acc": M.avg_acc(sq),
        "avg_inc_acc": M.avg_inc_acc(sq),
        "forgetting": M.forgetting(sq),
        "bwt": M.bwt(sq),
        "fwt": None,
        "plasticity": M.plasticity(sq),
        "forgetting_fn": M.reference_forgetting_fn(sq),
    }
    if R0 is not None:
        base = M.validate_baseline(R0, T, "R0")
        out["fwt"] = M.fwt(sq, base[:n])
        out["R0"] = base.tolist()
    if R_taw is not None:
        taw = M.validate_matrix(R_taw, "R_taw", partial=True)
        if taw.shape != full.shape:
            raise ValueError(f"R_taw must have the same shape as R {full.shape}; got {taw.shape}")
        taw_sq = taw[:n, :n]
        out["acc_matrix_task_aware"] = taw.tolist()
        out["avg_acc_task_aware"] = M.avg_acc(taw_sq)
        out["forgetting_task_aware"] = M.forgetting(taw_sq)
    return out


def acc_matrix_to_csv(R: M.ArrayLike) -> str:
    """CSV text of a (possibly partial) matrix: header ``after_exp,exp_0,...,exp_{T-1}``, one row per trained step.

    Values are written with Python's shortest round-trip float repr, so reading back gives the same floats.
    """
    arr = M.validate_matrix(R, "R", partial=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["after_exp"] + [f"exp_{j}" for j in range(arr.shape[1])])
    for t, row in enumerate(arr):
        writer.writerow([t] + [repr(float(v)) for v in row])
    return buf.getvalue()


def read_acc_matrix_csv(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a matrix written by :func:`write_reports` back as a float64 array (rows ordered by ``after_exp``)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or not rows[0] or rows[0][0] != "after_exp":
        raise ValueError(f"{path}: not an accuracy-matrix CSV (expected header 'after_exp,exp_0,...')")
    header, body = rows[0], rows[1:]
    expected = ["after_exp"] + [f"exp_{j}" for j in range(len(header) - 1)]
    if header != expected:
        raise ValueError(f"{path}: header {header} does not match {expected}")
    steps = [int(r[0]) for r in body]
    if steps != list(range(len(body))):
        raise ValueError(f"{path}: after_exp column must be 0..{len(body) - 1}; got {steps}")
    return M.validate_matrix([[float(v) for v in r[1:]] for r in body], str(path), partial=True)


def write_reports(
    run_dir: str | os.PathLike[str], metrics: dict[str, Any], R: M.ArrayLike, plot: bool = True
) -> dict[str, Path]:
    """Write ``metrics.json``, ``acc_matrix.csv`` and (if ``plot``) ``acc_matrix.png`` into ``run_dir`` atomically.

    ``R`` may be partial (rows 0..t of a T-column matrix). Returns the written paths keyed ``json``, ``csv``, ``png``.
    """
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be the dict returned by compute_metrics; got {type(metrics).__name__}")
    arr = M.validate_matrix(R, "R", partial=True)
    out_dir = Path(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / METRICS_JSON, "csv": out_dir / ACC_MATRIX_CSV}
    write_json(paths["json"], metrics)
    write_text(paths["csv"], acc_matrix_to_csv(arr))
    if plot:
        from cl.metrics.plots import plot_acc_matrix

        paths["png"] = plot_acc_matrix(arr, out_dir / ACC_MATRIX_PNG)
    return paths
