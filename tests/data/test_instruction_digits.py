"""The offline digits instruction stream: four tasks in the CoIN layout with different answer styles, readable by the
instruction loader, scored right by the per-style scorers, and diversifiable by ASD without a generator."""

from __future__ import annotations

import json
from collections import Counter

from cl.data.instruction import load_test_samples, load_train_samples, task_file
from cl.data.instruction_asd import diversify
from cl.data.instruction_digits import DIGIT_TASKS, TASK_STYLES, write_digits_instruction
from cl.metrics.answer_styles import score_answer


def test_digits_stream_layout_styles_and_asd(tmp_path):
    root = write_digits_instruction(tmp_path / "sefe_digits", seed=0)
    sizes = {}
    for task in DIGIT_TASKS:
        train = load_train_samples(task_file(root, task, "train.json"))
        test = load_test_samples(task_file(root, task, "test.json"))
        sizes[task] = (len(train), len(test))
        assert all((root / s["image"]).is_file() for s in train[:5] + test[:5])
        for s in train:  # every reference answer is right and well-formed for its task's style
            assert s["style"] == TASK_STYLES[task]
            reply = s["conversations"][1]["value"]
            assert score_answer(s["style"], reply, s["answer"]) == "correct", (task, reply, s["answer"])
        labels = Counter(s["label"] for s in train)
        assert set(labels) == (
            {0, 1, 2, 3, 4} if task == "DigitsMCQ" else {5, 6, 7, 8, 9} if task == "DigitsShort" else set(range(10))
        )
    assert sizes["Parity"][0] + sizes["Parity"][1] == 1797  # all of scikit-learn's digits
    assert sizes["DigitsMCQ"][0] + sizes["DigitsShort"][0] == sizes["Parity"][0]
    mcq = load_train_samples(task_file(root, "DigitsMCQ", "train.json"))
    mixed = diversify(mcq, "mcq", fraction=0.2, seed=0)  # the fields ASD needs are in the samples
    assert Counter(s["style"] for s in mixed)["mcq"] == len(mcq) - round(0.2 * len(mcq))
    # the same seed writes the same files
    again = write_digits_instruction(tmp_path / "again", seed=0)
    for task in DIGIT_TASKS:
        a = json.loads((root / "annotations" / task / "train.json").read_text())
        b = json.loads((again / "annotations" / task / "train.json").read_text())
        assert a == b
