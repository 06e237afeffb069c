"""Instruction-tuning tasks as a stream of experiences (one task = one experience), for the SEFE setting (Chen et
al., ICML 2025, arXiv 2505.02486; reference github jinpeng0528/SEFE, ``scripts/Train/*.sh``, ``scripts/Eval/*.sh``).

``load_instruction_source`` (``data.source``) reads the tasks in the CoIN layout (cl/data/instruction.py) in the order
of ``data.tasks``, with the tokenizer of ``data.tokenizer`` (a local folder), images resized to the vision encoder's
input (:class:`ImageTransform`), and, when ``asd.fraction > 0``, Answer Style Diversification of every task's training
set (cl/data/instruction_asd.py): the diversified file is written once to ``asd.dir/<Task>/train_x<X>_seed<S>.json``
(``_<style>-<style>`` appended when ``asd.styles`` restricts the task's target styles)
and read back by every later run with the same settings (repeatable). ``build_instruction_stream``
(``scenario=instruction``) turns it into the engine's :class:`cl.data.stream.Stream`: experience t holds task t's
training conversations and its test questions; "class" t stands for task t (task-incremental: the task is stated by
its prompt), so the engine's bookkeeping (checkpoints, metrics) is unchanged.

Each test question is scored in its ``style`` field (ASD's test files), else ``data.styles[task]``.
``eval_limit`` keeps the first N questions of each task's test file (CPU evaluation by greedy generation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cl.data.instruction import VICUNA_V1_SYSTEM, InstructionDataset, collate, load_tokenizer, tokenize_prompt

STYLE_NAMES = ("mcq", "yes_no", "short", "brief", "detail")


class ImageTransform:
    """PIL image -> ``(channels, size, size)`` float tensor: [0, 1], bilinear resize, grey (mean of RGB) for one
    channel, then ``(x - mean) / std`` (LLaVA pads to a square before CLIP's resize; a plain resize here)."""

    def __init__(self, size: int, channels: int = 3, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)):
        if channels not in (1, 3):
            raise ValueError(f"data.channels={channels}; allowed: 1 or 3")
        self.size, self.channels = int(size), int(channels)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Any) -> torch.Tensor:
        import numpy as np

        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        if self.channels == 1:
            x = x.mean(0, keepdim=True)
        x = torch.nn.functional.interpolate(x[None], size=(self.size, self.size), mode="bilinear")[0]
        return (x - self.mean) / self.std


class TrainTask(InstructionDataset):
    """A task's training conversations with the padding collate the engine's loader uses (``collate_fn``)."""

    def collate_fn(self, batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate(batch, pad_token_id(self.tokenizer))


class QuestionSet(Dataset):
    """A task's test questions: ``{input_ids (prompt), image, answer, style, id}`` in the vicuna_v1 template."""

    def __init__(self, questions: Sequence[dict[str, Any]], style: str, tokenizer: Any, images: InstructionDataset):
        self.questions, self.style, self.tokenizer, self.images = list(questions), style, tokenizer, images

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        q = self.questions[i]
        ids = tokenize_prompt(self.tokenizer, f"{VICUNA_V1_SYSTEM} USER: {q['text']} ASSISTANT:")
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return {
            "input_ids": torch.tensor(bos + ids),
            "image": self.images.load_image(q["image"]) if q.get("image") else None,
            "answer": str(q["answer"]),
            "style": str(q.get("style", self.style)),
            "id": q["question_id"],
        }

    @staticmethod
    def collate_fn(batch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(batch)


def pad_token_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


@dataclass
class InstructionTasks:
    """What ``data.source`` returns: per task its training set and test questions, and the tokenizer."""

    names: list[str]
    train: list[TrainTask]
    test: list[QuestionSet]
    tokenizer: Any
    classes: list[str] = field(default_factory=list)


def _diversified(samples: list[dict[str, Any]], task: str, style: str, asd: Mapping[str, Any]) -> list[dict[str, Any]]:
    """ASD's version of a task's training set: read from ``asd.dir`` if written before, else made and written."""
    import json

    from cl.data.instruction_asd import diversify, write_samples

    fraction, seed = float(asd.get("fraction", 0.0)), int(asd.get("seed", 0))
    if not asd.get("dir"):
        raise ValueError("data.asd.dir is not set; ASD writes its diversified training files there")
    targets = (asd.get("styles") or {}).get(task)
    suffix = "" if targets is None else "_" + "-".join(targets)  # the target styles when not the four others
    path = Path(str(asd["dir"])) / task / f"train_x{round(100 * fraction)}_seed{seed}{suffix}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = diversify(samples, style, fraction, seed, styles=None if targets is None else list(targets))
    write_samples(out, path)
    return out


def load_instruction_source(
    root: str | os.PathLike[str],
    tasks: Sequence[str],
    tokenizer: str | os.PathLike[str],
    styles: Mapping[str, str],
    train_file: str = "train.json",
    test_file: str = "test.json",
    image_size: int = 336,
    channels: int = 3,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    max_length: int = 2048,
    eval_limit: int | None = None,
    asd: Mapping[str, Any] | None = None,
    prepare: str | None = None,
) -> InstructionTasks:
    """The tasks of ``data.tasks`` from ``root`` (module docstring). ``prepare=digits`` first writes the offline
    digits stream (cl/data/instruction_digits.py) under ``root`` if it is not there."""
    from cl.data.instruction import load_test_samples, load_train_samples, task_file

    if prepare not in (None, "digits"):
        raise ValueError(f"data.source.prepare={prepare!r}; allowed: null or 'digits'")
    if prepare == "digits":
        from cl.data.instruction_digits import ensure_digits_instruction

        ensure_digits_instruction(root)
    tasks = [str(t) for t in tasks]
    if not tasks:
        raise ValueError("data.tasks is empty; name the tasks in training order")
    missing = [t for t in tasks if t not in styles]
    bad = {t: s for t, s in styles.items() if s not in STYLE_NAMES}
    if missing or bad:
        raise ValueError(f"data.styles must give every task one of {list(STYLE_NAMES)}; missing {missing}, bad {bad}")
    if eval_limit is not None and int(eval_limit) < 1:
        raise ValueError(f"data.eval_limit={eval_limit}; allowed: null (every question) or a positive integer")
    asd = dict(asd or {})
    fraction = float(asd.get("fraction", 0.0))
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.asd.fraction={fraction}; allowed: 0 (off) .. 1 (the paper's X / 100: 0.2)")
    tok = load_tokenizer(tokenizer)
    transform = ImageTransform(image_size, channels, mean, std)
    train_sets, test_sets = [], []
    for task in tasks:
        samples = load_train_samples(task_file(root, task, train_file))
        if fraction > 0:
            samples = _diversified(samples, task, styles[task], asd)
        questions = load_test_samples(task_file(root, task, test_file))
        questions = questions[: int(eval_limit)] if eval_limit is not None else questions
        train = TrainTask(samples, tok, root, transform, max_length)
        train_sets.append(train)
        test_sets.append(QuestionSet(questions, styles[task], tok, train))
    return InstructionTasks(tasks, train_sets, test_sets, tok, classes=list(tasks))


def build_instruction_stream(datasets: InstructionTasks, name: str = "task") -> Any:
    """One experience per task, in order (module docstring)."""
    from cl.data.stream import Experience, Stream

    if name != "task":
        raise ValueError(f"scenario.name={name!r} for instruction tasks; allowed: 'task' (one task per experience)")
    experiences = [
        Experience(index=t, classes=[t], task_label=t, train=train, test=test)
        for t, (train, test) in enumerate(zip(datasets.train, datasets.test, strict=True))
    ]
    T = len(experiences)
    return Stream("task", experiences, T, list(range(T)), datasets)
