"""cl.metrics.summary: the rich one-screen summary contains the matrix (percent, 1 decimal) and the metrics."""

from __future__ import annotations

import io

import pytest

from cl.metrics import compute_metrics, print_summary, render_summary

R3 = [
    [0.90, 0.10, 0.20],
    [0.95, 0.80, 0.30],
    [0.50, 0.70, 0.70],
]


def test_render_summary_contains_numbers() -> None:
    text = render_summary(compute_metrics(R3, R0=[0.1, 0.05, 0.1]), "coda digits [seed 0]", {"method": "coda"})
    assert "coda digits [seed 0]" in text  # brackets are not swallowed as rich markup
    for cell in ("90.0", "10.0", "20.0", "95.0", "80.0", "30.0", "50.0", "70.0"):
        assert cell in text
    # avg_acc 63.33, avg_inc_acc 80.28, forgetting 27.50, bwt -25.00, fwt 12.50, plasticity 80.00, F_N 11.25 (percent)
    for value in ("63.33", "80.28", "27.50", "-25.00", "12.50", "80.00", "11.25"):
        assert value in text
    assert "method" in text and "coda" in text
    assert "3/3 experiences" in text
    assert "\x1b[" not in text  # plain text, no ANSI codes


def test_render_summary_partial_and_missing_fwt() -> None:
    text = render_summary(compute_metrics([[0.9, 0.1, 0.2]]), "run")
    assert "1/3 experiences" in text
    assert "n/a" in text  # fwt without R0
    assert "90.0" in text and "20.0" in text


def test_print_summary_prints_and_returns_text() -> None:
    from rich.console import Console

    buf = io.StringIO()
    text = print_summary(compute_metrics(R3), "printed", console=Console(file=buf, width=120))
    assert "63.33" in buf.getvalue() and "63.33" in text


def test_render_summary_rejects_other_dicts() -> None:
    with pytest.raises(ValueError, match="acc_matrix"):
        render_summary({"avg_acc": 0.5}, "x")
