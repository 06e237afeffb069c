"""cl.metrics.report: the metrics dict, partial matrices, metrics.json / acc_matrix.csv / acc_matrix.png."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cl.metrics import compute_metrics, read_acc_matrix_csv, write_reports

# Same 4 x 4 hand matrix as test_metrics_matrix.py.
R4 = np.array(
    [
        [0.80, 0.00, 0.00, 0.00],
        [0.60, 0.90, 0.10, 0.00],
        [0.85, 0.50, 0.60, 0.20],
        [0.40, 0.60, 0.30, 1.00],
    ]
)
B4 = [0.25, 0.05, 0.00, 0.10]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_compute_metrics_full() -> None:
    m = compute_metrics(R4, R0=B4)
    assert m["acc_matrix"] == R4.tolist()
    assert (m["num_experiences"], m["experiences_trained"]) == (4, 4)
    # values computed by hand in test_metrics_matrix.py
    assert m["avg_acc"] == pytest.approx(0.575)
    assert m["avg_inc_acc"] == pytest.approx(0.69375)
    assert m["forgetting"] == pytest.approx(0.35)
    assert m["bwt"] == pytest.approx(-1.0 / 3.0)
    assert m["fwt"] == pytest.approx(0.05)
    assert m["plasticity"] == pytest.approx(0.825)
    assert m["forgetting_fn"] == pytest.approx(0.16388888888888889)
    assert m["R0"] == B4
    assert "acc_matrix_task_aware" not in m


def test_compute_metrics_without_r0_has_no_fwt() -> None:
    m = compute_metrics(R4)
    assert m["fwt"] is None
    assert "R0" not in m


def test_compute_metrics_partial_uses_trained_prefix() -> None:
    # rows 0..1 of R4 (4 columns): prefix [[0.8, 0.0], [0.6, 0.9]], b prefix [0.25, 0.05]
    m = compute_metrics(R4[:2], R0=B4)
    assert (m["num_experiences"], m["experiences_trained"]) == (4, 2)
    assert m["acc_matrix"] == R4[:2].tolist()  # all 4 columns kept
    assert m["avg_acc"] == pytest.approx(0.75)  # (0.6 + 0.9) / 2
    assert m["avg_inc_acc"] == pytest.approx(0.775)  # (0.8 + 0.75) / 2
    assert m["forgetting"] == pytest.approx(0.2)  # 0.8 - 0.6
    assert m["bwt"] == pytest.approx(-0.2)  # 0.6 - 0.8
    assert m["fwt"] == pytest.approx(-0.05)  # R[0][1] - b1 = 0.0 - 0.05
    assert m["plasticity"] == pytest.approx(0.85)  # (0.8 + 0.9) / 2
    assert m["forgetting_fn"] == pytest.approx(0.2)


def test_compute_metrics_task_aware() -> None:
    taw = np.array([[0.9, 0.5, 0.5], [0.8, 0.95, 0.5]])  # partial, 2 of 3 trained
    tag = np.array([[0.9, 0.0, 0.0], [0.3, 0.95, 0.0]])
    m = compute_metrics(tag, R_taw=taw)
    assert m["acc_matrix_task_aware"] == taw.tolist()
    assert m["avg_acc_task_aware"] == pytest.approx(0.875)  # (0.8 + 0.95) / 2
    assert m["forgetting_task_aware"] == pytest.approx(0.1)  # 0.9 - 0.8
    assert m["forgetting"] == pytest.approx(0.6)  # task-agnostic: 0.9 - 0.3
    with pytest.raises(ValueError, match="R_taw must have the same shape"):
        compute_metrics(tag, R_taw=taw[:1])


def test_compute_metrics_validation_names_argument() -> None:
    with pytest.raises(ValueError, match=r"R0 must be a vector of length T=4"):
        compute_metrics(R4, R0=B4[:3])
    with pytest.raises(ValueError, match=r"R_taw\[0, 0\]"):
        compute_metrics(R4[:1], R_taw=[[1.5, 0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="more rows than columns"):
        compute_metrics(R4[:, :2])


def test_write_reports_round_trip(tmp_path: Path) -> None:
    R = np.random.default_rng(0).uniform(size=(5, 5))
    metrics = compute_metrics(R, R0=np.full(5, 0.1))
    paths = write_reports(tmp_path / "run", metrics, R)
    assert set(paths) == {"json", "csv", "png"}
    assert json.loads(paths["json"].read_text()) == metrics
    lines = paths["csv"].read_text().splitlines()
    assert lines[0] == "after_exp,exp_0,exp_1,exp_2,exp_3,exp_4"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2", "3", "4"]
    back = read_acc_matrix_csv(paths["csv"])
    assert np.array_equal(back, R)  # exact: floats written with their round-trip repr
    data = paths["png"].read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_write_reports_partial_and_overwrite(tmp_path: Path) -> None:
    for t in range(4):  # the engine writes after every experience; each call replaces the files
        part = R4[: t + 1]
        write_reports(tmp_path, compute_metrics(part, R0=B4), part)
        back = read_acc_matrix_csv(tmp_path / "acc_matrix.csv")
        assert back.shape == (t + 1, 4)
        assert np.array_equal(back, part)
        assert json.loads((tmp_path / "metrics.json").read_text())["experiences_trained"] == t + 1
    from matplotlib.image import imread

    img = imread(tmp_path / "acc_matrix.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_write_reports_without_plot(tmp_path: Path) -> None:
    paths = write_reports(tmp_path, compute_metrics(R4), R4, plot=False)
    assert "png" not in paths and not (tmp_path / "acc_matrix.png").exists()


def test_read_csv_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("step,a\n0,0.5\n")
    with pytest.raises(ValueError, match="after_exp"):
        read_acc_matrix_csv(bad)
    bad.write_text("after_exp,exp_0,exp_1\n1,0.5,0.5\n")
    with pytest.raises(ValueError, match="after_exp column must be 0..0"):
        read_acc_matrix_csv(bad)


def test_import_is_light() -> None:
    code = "import sys, cl.metrics; print(sorted(m for m in ('matplotlib', 'rich', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
