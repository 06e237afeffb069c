"""Per-style answer scorers and the superficial / essential forgetting matrices of SEFE (Chen et al., ICML 2025,
arXiv 2505.02486; reference github jinpeng0528/SEFE, ``llava/eval/CoIN/eval_*.py``).

Every answer is scored into one of three outcomes: ``correct``; ``wrong`` (well-formed for its style but not the
right answer: essential forgetting when it was right before); ``malformed`` (not in the required format: superficial
forgetting, the reference counts these as ``FAILED`` = wrong). Styles (ASD's five, section 2 of the paper):

* ``mcq`` (option letter): the reference's ScienceQA parser (``eval_science_qa.py``): the whole answer is an option
  letter, or it starts with ``"X. "``, or it contains exactly one ``"The answer is X."``; the letter must be one of
  the first ``n_options`` letters;
* ``yes_no``: the first word, lower-cased without punctuation, is ``yes`` or ``no``;
* ``short``: at most ``short_max_words`` words on one line, compared by normalised exact match (lower case,
  punctuation and the articles a/an/the removed, as VQA's normalisation; the reference's VizWiz scorer compares
  upper-cased strings);
* ``brief`` / ``detail``: an explanation of ``brief_words`` / ``detail_words`` words (inclusive range; ASD asks for
  ~20 and ~50), correct when the normalised ground-truth answer occurs in it as whole words.

The word ranges and ``short_max_words`` are choices of this framework (the paper's response-format prompts are not in
the reference repository); they are arguments. :func:`outcome_rates` turns outcomes into accuracy, format-failure rate
and wrong-but-well-formed rate; :func:`style_report` gives the three matrices with MFN (mean final accuracy), MAA
(mean average accuracy over the incremental stages) and BWT of the accuracy matrix (cl/metrics/matrix.py);
:func:`count_report` does the same from outcome counts (what a run accumulates and checkpoints) and adds the
well-formed accuracy (correct among the well-formed answers: the knowledge left when the format is set aside) and the
final change on old tasks: ``superficial_forgetting = mean_{j<t} (FF[t, j] - FF[j, j])`` and ``essential_forgetting =
mean_{j<t} (WWF[t, j] - WWF[j, j])`` (FF: format-failure rate, WWF: wrong-but-well-formed rate, t the last row).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from cl.metrics.matrix import avg_acc, avg_inc_acc, bwt

STYLES = ("mcq", "yes_no", "short", "brief", "detail")
OUTCOMES = ("correct", "wrong", "malformed")
LETTERS = string.ascii_uppercase
_ANSWER_IS = re.compile(r"The answer is ([A-Z])\.")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def parse_option(prediction: str, n_options: int) -> str | None:
    """The option letter of a multiple-choice answer (the reference's rules, module docstring), or None."""
    options = LETTERS[:n_options]
    text = prediction.strip()
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 and found[0] in options else None


def parse_yes_no(prediction: str) -> str | None:
    words = normalize(prediction).split()
    return words[0] if words and words[0] in ("yes", "no") else None


def score_answer(
    style: str,
    prediction: str,
    answer: str,
    n_options: int = 4,
    short_max_words: int = 5,
    brief_words: tuple[int, int] = (8, 40),
    detail_words: tuple[int, int] = (30, 100),
) -> str:
    """``correct``, ``wrong`` or ``malformed`` for one answer of ``style`` (module docstring)."""
    if style == "mcq":
        letter = parse_option(prediction, n_options)
        return "malformed" if letter is None else ("correct" if letter == answer.strip().upper() else "wrong")
    if style == "yes_no":
        said = parse_yes_no(prediction)
        return "malformed" if said is None else ("correct" if said == normalize(answer) else "wrong")
    if style == "short":
        text = prediction.strip()
        if not text or "\n" in text or len(text.split()) > short_max_words:
            return "malformed"
        return "correct" if normalize(text) == normalize(answer) else "wrong"
    if style in ("brief", "detail"):
        low, high = brief_words if style == "brief" else detail_words
        if not low <= len(prediction.split()) <= high:
            return "malformed"
        said, truth = f" {normalize(prediction)} ", f" {normalize(answer)} "
        return "correct" if truth.strip() and truth in said else "wrong"
    raise ValueError(f"answer style {style!r}; allowed: {list(STYLES)}")


def outcome_rates(outcomes: Sequence[str]) -> dict[str, float]:
    """``accuracy``, ``format_failure`` (malformed) and ``wrong_well_formed`` rates of a list of outcomes."""
    if not outcomes:
        raise ValueError("no answers to score")
    bad = sorted(set(outcomes) - set(OUTCOMES))
    if bad:
        raise ValueError(f"unknown outcomes {bad}; allowed: {list(OUTCOMES)}")
    n = len(outcomes)
    return {
        "accuracy": sum(o == "correct" for o in outcomes) / n,
        "format_failure": sum(o == "malformed" for o in outcomes) / n,
        "wrong_well_formed": sum(o == "wrong" for o in outcomes) / n,
    }


def style_report(outcomes: Sequence[Sequence[Sequence[str]]]) -> dict[str, Any]:
    """``outcomes[t][j]``: the outcomes on task j after training task t (j <= t, or every task); returns the
    ``accuracy``, ``format_failure`` and ``wrong_well_formed`` matrices (lower triangle filled, NaN above when rows
    are shorter) and MFN, MAA, BWT of the accuracy matrix."""
    T = len(outcomes)
    mats = {k: np.full((T, T), np.nan) for k in ("accuracy", "format_failure", "wrong_well_formed")}
    for t, row in enumerate(outcomes):
        if len(row) < t + 1:
            raise ValueError(f"row {t} of the outcomes covers {len(row)} tasks; it needs tasks 0..{t}")
        for j, cell in enumerate(row[:T]):
            for k, v in outcome_rates(cell).items():
                mats[k][t, j] = v
    acc = np.nan_to_num(mats["accuracy"])  # the metrics read the lower triangle only
    return {
        **{k: v.tolist() for k, v in mats.items()},
        "mfn": avg_acc(acc),
        "maa": avg_inc_acc(acc),
        "bwt": bwt(acc),
        "final_format_failure": float(np.nanmean(mats["format_failure"][-1])),
        "final_wrong_well_formed": float(np.nanmean(mats["wrong_well_formed"][-1])),
    }


def count_report(counts: Any) -> dict[str, Any]:
    """``counts[t, j] = (correct, wrong, malformed)`` on task j after training task t (rows 0..t of T columns): the
    four rate matrices, MFN / MAA / BWT over the trained square and the final changes on old tasks (module docstring).
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 3 or c.shape[2] != 3 or c.shape[0] > c.shape[1]:
        raise ValueError(f"counts must have shape (t+1, T, 3) with t+1 <= T; got {c.shape}")
    n = c.shape[0]
    total = c.sum(2)
    if (total[:, :n] <= 0).any():
        raise ValueError("every seen task needs scored answers in every row (a zero count)")
    safe = np.where(total > 0, total, 1.0)
    acc, wrong, bad = c[..., 0] / safe, c[..., 1] / safe, c[..., 2] / safe
    formed = c[..., 0] + c[..., 1]
    well = np.where(formed > 0, c[..., 0] / np.where(formed > 0, formed, 1.0), 0.0)
    sq = acc[:, :n]
    old = range(n - 1)
    return {
        "style_matrices": {
            "accuracy": acc.tolist(),
            "format_failure": bad.tolist(),
            "wrong_well_formed": wrong.tolist(),
            "well_formed_accuracy": well.tolist(),
        },
        "mfn": avg_acc(sq),
        "maa": avg_inc_acc(sq),
        "bwt": bwt(sq),
        "final_format_failure": float(bad[-1, :n].mean()),
        "final_wrong_well_formed": float(wrong[-1, :n].mean()),
        "superficial_forgetting": float(np.mean([bad[-1, j] - bad[j, j] for j in old])) if n > 1 else 0.0,
        "essential_forgetting": float(np.mean([wrong[-1, j] - wrong[j, j] for j in old])) if n > 1 else 0.0,
    }
