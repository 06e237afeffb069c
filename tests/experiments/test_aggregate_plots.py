"""experiments.aggregate_plots: the numbers behind each picture, and the pictures aggregate writes for a sweep."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest

from experiments.aggregate import aggregate
from experiments.aggregate_plots import accuracy_curve, curve_stats, mean_matrices, tradeoff_points, write_sweep_plots
from tests.experiments.test_aggregate import make_run

A = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.3, 0.4, 0.7]]
B = [[0.7, 0.0, 0.0], [0.5, 0.6, 0.0], [0.1, 0.2, 0.9]]


def _runs() -> dict:
    return {
        "ewc": [
            {"avg_acc": 0.4, "forgetting": 0.2, "acc_matrix": A},
            {"avg_acc": 0.6, "forgetting": 0.4, "acc_matrix": B},
        ],
        "joint": [{"avg_acc": 0.9, "forgetting": 0.0, "acc_matrix": A}],
        "broken": [{"avg_acc": None}],
    }  # fmt: skip


def test_accuracy_curve_is_the_mean_of_row_t_up_to_t() -> None:
    assert accuracy_curve(A) == pytest.approx([0.9, 0.65, (0.3 + 0.4 + 0.7) / 3])


def test_points_curves_and_matrices_are_means_and_sample_stds_over_seeds() -> None:
    points = {p[0]: p[1:] for p in tradeoff_points(_runs())}
    assert set(points) == {"ewc", "joint"}  # a group without numbers draws nothing
    acc, acc_sd, fgt, fgt_sd, n = points["ewc"]
    assert (acc, fgt, n) == (pytest.approx(50.0), pytest.approx(30.0), 2)
    assert acc_sd == pytest.approx(statistics.stdev([40.0, 60.0])) and fgt_sd == pytest.approx(
        statistics.stdev([20.0, 40.0])
    )
    assert points["joint"][1] == 0.0  # one seed: no bar
    mean, std, n = curve_stats(_runs())["ewc"]
    assert n == 2 and mean == pytest.approx([80.0, 60.0, (140 / 3 + 40.0) / 2])
    assert std[0] == pytest.approx(statistics.stdev([90.0, 70.0]))
    mats = {label: arr for label, arr, _ in mean_matrices(_runs())}
    assert np.allclose(mats["ewc"], (np.array(A) + np.array(B)) * 50.0)


def test_write_sweep_plots_writes_three_pngs(tmp_path: Path) -> None:
    files = write_sweep_plots(_runs(), tmp_path)
    assert sorted(p.name for p in files) == ["acc_matrices.png", "accuracy_curves.png", "tradeoff.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files)
    assert write_sweep_plots({"x": [{"avg_acc": None}]}, tmp_path / "none") == []


def test_aggregate_writes_the_pictures_of_any_sweep(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for i, (method, seed, acc) in enumerate([("finetune", 0, 0.2), ("finetune", 1, 0.3), ("ewc", 0, 0.5)]):
        make_run(root, str(i), method, seed, acc)
    names = {p.name for p in aggregate(root)["files"]}
    assert {"tradeoff.png", "accuracy_curves.png", "acc_matrices.png"} <= names
    assert (root / "aggregate" / "tradeoff.png").stat().st_size > 1000
