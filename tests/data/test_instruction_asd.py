"""ASD on a hand-made classification-like task: proportions and styles, content sources, seeding, the file on disk."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cl.data.instruction_asd import FORMAT_PROMPTS, diversify, write_samples
from cl.metrics.answer_styles import score_answer

NAMES = ["zero", "one", "two", "three", "four"]


def _task(n: int = 50) -> list[dict]:
    return [
        {
            "id": f"d{i}",
            "image": f"digits/{i}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhich digit is this?"},
                {"from": "gpt", "value": NAMES[i % 5]},
            ],
            "brief": f"It is {NAMES[i % 5]}: " + " ".join(["the strokes match that digit"] * 3) + ".",
        }
        for i in range(n)
    ]


def test_twenty_percent_split_evenly_over_the_four_other_styles():
    out = diversify(_task(50), "short", fraction=0.2, seed=0, generator=lambda s, style: "x " * 50)
    styles = Counter(s["style"] for s in out)
    assert styles == {"short": 40, "yes_no": 3, "mcq": 3, "brief": 2, "detail": 2}  # 10 = 3 + 3 + 2 + 2
    assert [s["id"] for s in out] == [f"d{i}" for i in range(50)] and all(s["image"] for s in out)
    for s in out:
        human, gpt = s["conversations"][0]["value"], s["conversations"][1]["value"]
        if s["style"] != "short":
            assert human.startswith("<image>\nWhich digit is this?") and human.endswith(FORMAT_PROMPTS[s["style"]])
        # every reference answer is well-formed and right for its own style
        n_words_ok = s["style"] != "detail"  # the stub generator's 50 words are right length, but not the answer
        if n_words_ok:
            assert score_answer(s["style"], gpt, s["answer"]) == "correct", s


def test_mcq_and_yes_no_distractors_come_from_the_other_labels_and_seed_repeats():
    out = diversify(_task(50), "short", fraction=1.0, seed=3, generator=lambda s, style: "x")
    for s in out:
        human = s["conversations"][0]["value"]
        if s["style"] == "mcq":
            options = [line[3:] for line in human.splitlines() if line[:3] in ("A. ", "B. ", "C. ", "D. ")]
            assert len(set(options)) == 4 and set(options) <= set(NAMES)
            truth = NAMES[int(s["id"][1:]) % 5]
            assert options["ABCD".index(s["answer"])] == truth
        if s["style"] == "yes_no":
            assert s["answer"] in ("yes", "no") and "Is the answer" in human
    assert diversify(_task(50), "short", 1.0, seed=3, generator=lambda s, st: "x") == out
    assert diversify(_task(50), "short", 1.0, seed=4, generator=lambda s, st: "x") != out


def test_missing_sources_and_bad_values_stop_with_the_field_name(tmp_path):
    task = _task(5)
    for s in task:
        del s["brief"]
    with pytest.raises(ValueError, match="'brief' field or asd generator"):
        diversify(task, "short", fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="asd.fraction"):
        diversify(task, "short", fraction=20)
    with pytest.raises(ValueError, match="answer style 'essay'"):
        diversify(task, "essay")
    one_label = [dict(s, conversations=[s["conversations"][0], {"from": "gpt", "value": "zero"}]) for s in task]
    with pytest.raises(ValueError, match="distractors"):
        diversify(one_label, "short", fraction=0.4, seed=0)  # 2 samples: yes_no and mcq
    out = diversify(_task(10), "short", 0.2, seed=1)
    write_samples(out, tmp_path / "train_x20.json")
    assert json.loads((tmp_path / "train_x20.json").read_text()) == out


def test_target_styles_can_be_restricted_per_task():
    out = diversify(_task(50), "short", fraction=0.2, seed=0, styles=["brief", "detail"], generator=lambda s, st: "x")
    assert Counter(s["style"] for s in out) == {"short": 40, "brief": 5, "detail": 5}
    with pytest.raises(ValueError, match="non-empty subset"):
        diversify(_task(10), "short", styles=["short"])
    with pytest.raises(ValueError, match="non-empty subset"):
        diversify(_task(10), "short", styles=["essay"])
