"""cl.metrics.matrix against accuracy matrices computed by hand (R[t][j]: accuracy on exp j after training exp t)."""

from __future__ import annotations

import numpy as np
import pytest

from cl.metrics import matrix as M

# 3 x 3 hand matrix; R[1][0] > R[0][0] so max-based forgetting differs from -BWT.
R3 = [
    [0.90, 0.10, 0.20],
    [0.95, 0.80, 0.30],
    [0.50, 0.70, 0.70],
]
B3 = [0.10, 0.05, 0.10]

# 4 x 4 hand matrix; the best accuracy of exp 0 is reached at t=2, not on the diagonal.
R4 = [
    [0.80, 0.00, 0.00, 0.00],
    [0.60, 0.90, 0.10, 0.00],
    [0.85, 0.50, 0.60, 0.20],
    [0.40, 0.60, 0.30, 1.00],
]
B4 = [0.25, 0.05, 0.00, 0.10]

TOL = 1e-12


def test_avg_acc_hand() -> None:
    # R3: (0.5 + 0.7 + 0.7) / 3 = 1.9 / 3
    assert M.avg_acc(R3) == pytest.approx(0.6333333333333333, abs=TOL)
    # R4: (0.4 + 0.6 + 0.3 + 1.0) / 4 = 2.3 / 4
    assert M.avg_acc(R4) == pytest.approx(0.575, abs=TOL)


def test_avg_inc_acc_hand() -> None:
    # R3: t0 0.9; t1 (0.95+0.8)/2 = 0.875; t2 1.9/3 = 0.633333..; mean = 2.408333../3
    assert M.avg_inc_acc(R3) == pytest.approx(0.8027777777777778, abs=TOL)
    # R4: t0 0.8; t1 (0.6+0.9)/2 = 0.75; t2 (0.85+0.5+0.6)/3 = 0.65; t3 0.575; mean = 2.775/4
    assert M.avg_inc_acc(R4) == pytest.approx(0.69375, abs=TOL)


def test_forgetting_hand() -> None:
    # R3: j0 max(0.9, 0.95) - 0.5 = 0.45; j1 0.8 - 0.7 = 0.1; mean = 0.275
    assert M.forgetting(R3) == pytest.approx(0.275, abs=TOL)
    # R4: j0 max(0.8, 0.6, 0.85) - 0.4 = 0.45; j1 max(0.9, 0.5) - 0.6 = 0.3; j2 0.6 - 0.3 = 0.3; mean = 1.05/3
    assert M.forgetting(R4) == pytest.approx(0.35, abs=TOL)


def test_bwt_hand() -> None:
    # R3: j0 0.5 - 0.9 = -0.4; j1 0.7 - 0.8 = -0.1; mean = -0.25 (differs from -forgetting because of R[1][0])
    assert M.bwt(R3) == pytest.approx(-0.25, abs=TOL)
    # R4: j0 0.4 - 0.8; j1 0.6 - 0.9; j2 0.3 - 0.6; mean = -1.0/3
    assert M.bwt(R4) == pytest.approx(-0.3333333333333333, abs=TOL)


def test_fwt_hand() -> None:
    # R3: j1 R[0][1] - b1 = 0.1 - 0.05 = 0.05; j2 R[1][2] - b2 = 0.3 - 0.1 = 0.2; mean = 0.125
    assert M.fwt(R3, B3) == pytest.approx(0.125, abs=TOL)
    # R4: j1 0.0 - 0.05; j2 0.1 - 0.0; j3 0.2 - 0.1; mean = 0.15/3
    assert M.fwt(R4, B4) == pytest.approx(0.05, abs=TOL)


def test_plasticity_hand() -> None:
    # R3: (0.9 + 0.8 + 0.7) / 3 ; R4: (0.8 + 0.9 + 0.6 + 1.0) / 4
    assert M.plasticity(R3) == pytest.approx(0.8, abs=TOL)
    assert M.plasticity(R4) == pytest.approx(0.825, abs=TOL)


def test_reference_forgetting_fn_hand() -> None:
    # CODA-Prompt F_N = 1/(T-1) * sum_{t=1}^{T-1} 1/t * sum_{i<t} (R[t-1][i] - R[t][i])
    # R3: t1: (0.9 - 0.95)/1 = -0.05; t2: ((0.95-0.5) + (0.8-0.7))/2 = 0.275; F = (-0.05 + 0.275)/2 = 0.1125
    assert M.reference_forgetting_fn(R3) == pytest.approx(0.1125, abs=TOL)
    # R4: t1: 0.8-0.6 = 0.2; t2: ((0.6-0.85) + (0.9-0.5))/2 = 0.075;
    #     t3: ((0.85-0.4) + (0.5-0.6) + (0.6-0.3))/3 = 0.65/3; F = (0.2 + 0.075 + 0.216666..)/3 = 0.491666../3
    assert M.reference_forgetting_fn(R4) == pytest.approx(0.16388888888888889, abs=TOL)


def test_single_experience() -> None:
    R1 = [[0.42]]
    assert M.avg_acc(R1) == pytest.approx(0.42)
    assert M.avg_inc_acc(R1) == pytest.approx(0.42)
    assert M.plasticity(R1) == pytest.approx(0.42)
    assert M.forgetting(R1) == 0.0
    assert M.bwt(R1) == 0.0
    assert M.fwt(R1, [0.1]) == 0.0
    assert M.reference_forgetting_fn(R1) == 0.0


def test_numpy_and_list_inputs_agree() -> None:
    arr = np.asarray(R4, dtype=np.float32)
    assert M.forgetting(arr) == pytest.approx(M.forgetting(R4), abs=1e-6)
    assert isinstance(M.avg_acc(arr), float)


def test_trained_prefix() -> None:
    part = np.asarray(R4)[:2]
    np.testing.assert_array_equal(M.trained_prefix(part), np.asarray(R4)[:2, :2])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([0.5, 0.5], "2-D"),
        ([[[0.5]]], "2-D"),
        (np.zeros((0, 0)), "at least one row"),
        ([[0.5, 0.5]], "square"),
        ([[0.5, float("nan")], [0.5, 0.5]], r"R\[0, 1\].*NaN"),
        ([[0.5, 0.5], [float("inf"), 0.5]], r"R\[1, 0\]"),
        ([[90.0, 10.0], [80.0, 70.0]], "percent"),
        ([[0.5, -0.1], [0.5, 0.5]], r"outside the allowed range \[0, 1\]"),
        ([["a", "b"], ["c", "d"]], "numeric"),
    ],
)
def test_validation_errors(bad: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.avg_acc(bad)  # type: ignore[arg-type]


def test_partial_validation() -> None:
    assert M.validate_matrix(np.full((2, 3), 0.5), partial=True).shape == (2, 3)
    with pytest.raises(ValueError, match="more rows than columns"):
        M.validate_matrix(np.full((3, 2), 0.5), partial=True)


def test_fwt_baseline_validation() -> None:
    with pytest.raises(ValueError, match="length T=3"):
        M.fwt(R3, [0.1, 0.1])
    with pytest.raises(ValueError, match=r"R0\[1\]"):
        M.fwt(R3, [0.1, float("nan"), 0.1])
