"""Continual-learning metrics over the accuracy matrix R (R[t][j]: accuracy on experience j after experience t).

Pure metric functions live in :mod:`cl.metrics.matrix` (formulas and sources in its docstrings), the run report
(``metrics.json``, ``acc_matrix.csv``, ``acc_matrix.png``) in :mod:`cl.metrics.report`, the heatmap in
:mod:`cl.metrics.plots` and the rich console summary in :mod:`cl.metrics.summary`. Importing this package loads only
numpy; matplotlib and rich are imported when a plot or summary is made.
"""

from cl.metrics.matrix import (
    avg_acc,
    avg_inc_acc,
    bwt,
    forgetting,
    fwt,
    plasticity,
    reference_forgetting_fn,
    trained_prefix,
    validate_baseline,
    validate_matrix,
)
from cl.metrics.report import acc_matrix_to_csv, compute_metrics, read_acc_matrix_csv, write_reports
from cl.metrics.summary import print_summary, render_summary

__all__ = [
    "acc_matrix_to_csv",
    "avg_acc",
    "avg_inc_acc",
    "bwt",
    "compute_metrics",
    "forgetting",
    "fwt",
    "plasticity",
    "print_summary",
    "read_acc_matrix_csv",
    "reference_forgetting_fn",
    "render_summary",
    "trained_prefix",
    "validate_baseline",
    "validate_matrix",
    "write_reports",
]
