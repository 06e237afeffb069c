"""Answer Style Diversification (ASD), the data side of SEFE (Chen et al., ICML 2025, arXiv 2505.02486; reference
github jinpeng0528/SEFE, ``CoIN-ASD/prompts/<Task>/{yn,mcq,brief,detail}.txt``; released as ``train_x{X}.json``).

``diversify(samples, task_style, fraction)`` converts ``fraction`` of a task's training samples (default 0.2 = the
paper's X = 20), split evenly over the four styles other than the task's own (the remainder to the first styles in
:data:`STYLES` order), into: ``yes_no`` (a two-choice question with one distractor: "Is the answer <candidate>?", the
candidate the truth or the distractor with probability 1/2), ``mcq`` (4 options, three distractors, shuffled),
``short``, ``brief`` (~20 words) and ``detail`` (~50 words) explanations; each converted question ends with a
response-format prompt (:data:`FORMAT_PROMPTS`: the paper's RFP texts are not in the reference repository; the
``mcq`` and ``short`` ones are LLaVA-1.5's). Samples are in the LLaVA / CoIN layout (``id``, optional ``image``,
``conversations: [{from: human, value}, {from: gpt, value}]``); every output sample gets ``style`` and ``answer``
(the ground truth to score against, cl/metrics/answer_styles.py).

Where the content comes from, in this order: fields of the sample (``answer`` = the short ground truth, else the gpt
turn; ``distractors``: a list; ``brief`` / ``detail``: explanations); for distractors, the task's other answers (the
classification-like tasks: ImageNet, digits); else ``generator(sample, style)``, a callable the user names, returning
the distractor list or the explanation. A missing source stops with the field's name. The choice of samples and
every random draw come from ``seed``; :func:`write_samples` writes the result atomically, so a run can be repeated.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

from cl.utils.atomic import write_json

STYLES = ("yes_no", "mcq", "short", "brief", "detail")
FORMAT_PROMPTS = {
    "yes_no": "Answer the question with Yes or No.",
    "mcq": "Answer with the option's letter from the given choices directly.",
    "short": "Answer the question using a single word or phrase.",
    "brief": "Answer the question and explain your answer briefly, in about 20 words.",
    "detail": "Answer the question and explain your answer in detail, in about 50 words.",
}
Generator = Callable[[dict[str, Any], str], Any]


def question_and_answer(sample: dict[str, Any]) -> tuple[str, str]:
    turns = sample.get("conversations") or []
    if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
        raise ValueError(f"sample {sample.get('id')!r}: conversations must start with a human then a gpt turn")
    return str(turns[0]["value"]), str(turns[1]["value"])


def _truth(sample: dict[str, Any]) -> str:
    return str(sample.get("answer", question_and_answer(sample)[1])).strip()


def _distractors(sample: dict[str, Any], n: int, pool: Sequence[str], rng: random.Random, gen: Generator | None):
    truth = _truth(sample)
    if sample.get("distractors"):
        found = [str(d) for d in sample["distractors"] if str(d) != truth]
    else:
        others = sorted({p for p in pool if p != truth})
        found = rng.sample(others, min(n, len(others))) if len(others) >= n else []
        if not found and gen is not None:
            found = [str(d) for d in gen(sample, "distractors")]
    if len(found) < n:
        raise ValueError(
            f"sample {sample.get('id')!r}: {n} distractors needed; give a 'distractors' field, a task with at least "
            f"{n + 1} distinct answers, or asd generator"
        )
    return found[:n]


def _explanation(sample: dict[str, Any], style: str, gen: Generator | None) -> str:
    if sample.get(style):
        return str(sample[style])
    if gen is not None:
        return str(gen(sample, style))
    raise ValueError(f"sample {sample.get('id')!r}: a {style!r} explanation needs a {style!r} field or asd generator")


def convert(
    sample: dict[str, Any], style: str, pool: Sequence[str], rng: random.Random, gen: Generator | None = None
) -> dict[str, Any]:
    """``sample`` rewritten in answer ``style`` (module docstring); the image and id are kept."""
    if style not in STYLES:
        raise ValueError(f"asd style {style!r}; allowed: {list(STYLES)}")
    question, _ = question_and_answer(sample)
    truth = _truth(sample)
    out = copy.deepcopy(sample)
    if style == "yes_no":
        distractor = _distractors(sample, 1, pool, rng, gen)[0]
        candidate = truth if rng.random() < 0.5 else distractor
        prompt, reply = f"{question}\nIs the answer {candidate}?", "Yes" if candidate == truth else "No"
        answer = reply.lower()
    elif style == "mcq":
        options = [truth, *_distractors(sample, 3, pool, rng, gen)]
        rng.shuffle(options)
        letters = "ABCD"
        listed = "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(options))
        prompt, reply = f"{question}\n{listed}", letters[options.index(truth)]
        answer = reply
    elif style == "short":
        prompt, reply, answer = question, truth, truth
    else:
        prompt, reply, answer = question, _explanation(sample, style, gen), truth
    out["conversations"] = [
        {"from": "human", "value": f"{prompt}\n{FORMAT_PROMPTS[style]}"},
        {"from": "gpt", "value": reply},
    ]
    out["style"], out["answer"] = style, answer
    return out


def diversify(
    samples: Sequence[dict[str, Any]],
    task_style: str,
    fraction: float = 0.2,
    seed: int = 0,
    generator: Generator | None = None,
    styles: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The task's samples with ``fraction`` of them converted to the other four styles (module docstring), or to
    ``styles`` (the reference converts ImageNet and Grounding to brief / detail only; a yes/no task has no three
    distractors for a 4-option question)."""
    if task_style not in STYLES:
        raise ValueError(f"the task's answer style {task_style!r}; allowed: {list(STYLES)}")
    if styles is not None and (not styles or set(styles) - set(STYLES) or task_style in styles):
        allowed = [s for s in STYLES if s != task_style]
        raise ValueError(
            f"asd styles {list(styles)} for a {task_style!r} task; allowed: a non-empty subset of {allowed}"
        )
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"asd.fraction={fraction}; allowed: 0 <= fraction <= 1 (the paper's X / 100, default 0.2)")
    rng = random.Random(seed)
    n = round(float(fraction) * len(samples))
    chosen = rng.sample(range(len(samples)), n)
    others = [s for s in STYLES if s != task_style] if styles is None else [s for s in STYLES if s in styles]
    targets = [others[i % len(others)] for i in range(n)]  # even split, remainder to the first styles
    plan = dict(zip(chosen, targets, strict=True))
    pool = [_truth(s) for s in samples]
    out = []
    for i, sample in enumerate(samples):
        if i in plan:
            out.append(convert(sample, plan[i], pool, rng, generator))
        else:
            kept = copy.deepcopy(sample)
            kept["style"], kept["answer"] = task_style, _truth(sample)
            out.append(kept)
    return out


def write_samples(samples: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """The (diversified) task as a LLaVA / CoIN JSON list, written atomically."""
    write_json(path, list(samples))
