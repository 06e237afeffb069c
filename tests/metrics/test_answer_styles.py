"""Per-style scorers on hand-written answers (well-formed right, well-formed wrong, malformed) and the superficial /
essential forgetting matrices on a hand-made 2-task case."""

from __future__ import annotations

import math

import pytest

from cl.metrics.answer_styles import outcome_rates, parse_option, score_answer, style_report

BRIEF_RIGHT = "The digit is a seven because the stroke runs across the top and then falls down to the bottom left."
BRIEF_WRONG = "The digit is a one because a single vertical stroke runs from the top straight down to the bottom."
DETAIL = " ".join(["The image shows a handwritten digit with a horizontal bar on top."] * 3 + ["It is a seven."])


@pytest.mark.parametrize(
    ("style", "prediction", "answer", "expected"),
    [
        ("mcq", "B", "B", "correct"),
        ("mcq", "B. seven", "B", "correct"),
        ("mcq", "Looking at the strokes, The answer is C.", "B", "wrong"),
        ("mcq", "A", "B", "wrong"),
        ("mcq", "E", "B", "malformed"),  # not among 4 options
        ("mcq", "seven", "B", "malformed"),  # the ScienceQA scorer's FAILED
        ("mcq", "The answer is A. The answer is B.", "B", "malformed"),  # two letters: FAILED as the reference
        ("yes_no", "Yes.", "yes", "correct"),
        ("yes_no", "no, it is odd", "yes", "wrong"),
        ("yes_no", "It is odd.", "yes", "malformed"),
        ("short", "Seven.", "seven", "correct"),
        ("short", "the seven", "seven", "correct"),  # articles and punctuation normalised
        ("short", "eight", "seven", "wrong"),
        ("short", BRIEF_RIGHT, "seven", "malformed"),  # an explanation where a short answer is required
        ("brief", BRIEF_RIGHT, "seven", "correct"),
        ("brief", BRIEF_WRONG, "seven", "wrong"),
        ("brief", "seven", "seven", "malformed"),  # too short for a brief explanation
        ("detail", DETAIL, "seven", "correct"),
        ("detail", BRIEF_RIGHT, "seven", "malformed"),  # 20 words: not a detailed explanation
    ],
)
def test_scorers_on_hand_written_answers(style, prediction, answer, expected):
    assert score_answer(style, prediction, answer) == expected


def test_option_parser_follows_the_reference_rules_and_bad_style_is_refused():
    assert parse_option("D", n_options=4) == "D" and parse_option("D", n_options=3) is None
    assert parse_option("C. a cat", 5) == "C" and parse_option("C.a cat", 5) is None
    with pytest.raises(ValueError, match="answer style 'essay'"):
        score_answer("essay", "x", "y")


def test_style_report_separates_superficial_from_essential_forgetting():
    # task 0 (mcq) after task 0: 3 right, 1 wrong; after task 1: 1 right, 2 malformed (format lost), 1 wrong
    t0 = ["correct"] * 3 + ["wrong"]
    t0_after = ["correct", "malformed", "malformed", "wrong"]
    t1 = ["correct", "correct", "wrong", "correct"]
    rep = style_report([[t0], [t0_after, t1]])
    assert rep["accuracy"][0][0] == 0.75 and rep["accuracy"][1] == [0.25, 0.75]
    assert rep["format_failure"][1][0] == 0.5 and rep["wrong_well_formed"][1][0] == 0.25
    assert math.isnan(rep["accuracy"][0][1])
    assert rep["mfn"] == pytest.approx(0.5)  # (0.25 + 0.75) / 2
    assert rep["maa"] == pytest.approx((0.75 + 0.5) / 2)
    assert rep["bwt"] == pytest.approx(0.25 - 0.75)
    assert outcome_rates(["malformed"]) == {"accuracy": 0.0, "format_failure": 1.0, "wrong_well_formed": 0.0}
    with pytest.raises(ValueError, match="needs tasks 0..1"):
        style_report([[t0], [t0_after]])


def test_count_report_from_a_run_s_outcome_counts():
    from cl.metrics.answer_styles import count_report

    # (correct, wrong, malformed): task 0 after task 0: 3/1/0; after task 1: 1/1/2; task 1 after task 1: 3/1/0
    counts = [[[3, 1, 0], [0, 0, 4]], [[1, 1, 2], [3, 1, 0]]]
    rep = count_report(counts)
    m = rep["style_matrices"]
    assert m["accuracy"][1] == [0.25, 0.75] and m["format_failure"][1][0] == 0.5
    assert m["wrong_well_formed"][1][0] == 0.25 and m["well_formed_accuracy"][1][0] == 0.5  # 1 of 2 well-formed
    assert rep["superficial_forgetting"] == pytest.approx(0.5 - 0.0)
    assert rep["essential_forgetting"] == pytest.approx(0.25 - 0.25)
    assert rep["mfn"] == pytest.approx(0.5) and rep["bwt"] == pytest.approx(-0.5)
    assert rep["maa"] == pytest.approx((0.75 + 0.5) / 2)
    assert count_report(counts[:1])["superficial_forgetting"] == 0.0  # one task: nothing to forget yet
    with pytest.raises(ValueError, match="zero count"):
        count_report([[[0, 0, 0], [1, 0, 0]]])
