"""Instruction-tuning tasks in the LLaVA / CoIN layout (SEFE, arXiv 2505.02486, reference github jinpeng0528/SEFE:
``scripts/Train/*.sh``, ``scripts/Eval/*.sh``, ``llava/eval/CoIN/model_others.py``, ``llava/conversation.py``).

Layout, as the reference reads it (``root`` = its ``playground/data/CoIN``):

* ``root/annotations/<Task>/train.json`` (or ``train_x20.json``, ASD's version): a JSON list of
  ``{id, image?, conversations: [{from: human, value}, {from: gpt, value}, ...]}``;
* ``root/annotations/<Task>/test.json``: ``{question_id, image?, text, answer}`` (``answer``: the ground truth to score;
  the reference scores against per-task annotation files instead);
* images at ``root/<image>`` (the ``image`` field is relative to ``root``).

CoIN's eight tasks in order: :data:`COIN_TASKS`. A training example is the conversation in the ``vicuna_v1`` template
(the reference's ``--version v1``): ``SYSTEM USER: q ASSISTANT: a</s>`` per turn; the loss covers the answer tokens
and their ``</s>`` only (labels ``-100`` elsewhere, as LLaVA's ``preprocess_v1``); ``<image>`` becomes the id
:data:`IMAGE_TOKEN_INDEX` (-200, LLaVA's), where a LLaVA-style model inserts the image features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

COIN_TASKS = ("ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCR-VQA")
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def task_file(root: str | os.PathLike[str], task: str, split_file: str) -> Path:
    """``root/annotations/<task>/<split_file>``, with an error naming the expected path when it is missing."""
    path = Path(root) / "annotations" / task / split_file
    if not path.is_file():
        raise FileNotFoundError(
            f"instruction task {task!r}: no {path} (data.root must hold the CoIN layout annotations/<Task>/"
            f"{split_file}; CoIN / CoIN-ASD annotations from the Hugging Face datasets of the SEFE README)"
        )
    return path


def load_train_samples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A training file: a list of samples with a human/gpt ``conversations`` list (checked)."""
    samples = json.loads(Path(path).read_text())
    if not isinstance(samples, list):
        raise ValueError(f"{path}: expected a JSON list of samples")
    for s in samples:
        turns = s.get("conversations")
        if not turns or len(turns) % 2 or any(t.get("from") != w for t, w in zip(turns, ["human", "gpt"] * len(turns))):
            raise ValueError(f"{path}: sample {s.get('id')!r} needs conversations alternating human / gpt turns")
    return samples


def load_test_samples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A test file: ``{question_id, text, answer, image?}`` per question (checked)."""
    samples = json.loads(Path(path).read_text())
    for s in samples:
        missing = [k for k in ("question_id", "text", "answer") if k not in s]
        if missing:
            raise ValueError(f"{path}: question {s.get('question_id')!r} lacks {missing}")
    return samples


def tokenize_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with each ``<image>`` replaced by :data:`IMAGE_TOKEN_INDEX` (no special tokens)."""
    ids: list[int] = []
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return ids


def encode_conversation(
    tokenizer: Any, turns: Sequence[dict[str, str]], max_length: int
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a conversation in the vicuna_v1 template; labels only on the answers + ``</s>``."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids, labels = list(bos), [IGNORE_INDEX] * len(bos)
    for k in range(0, len(turns), 2):
        prefix = f"{VICUNA_V1_SYSTEM} " if k == 0 else ""
        prompt = tokenize_prompt(tokenizer, f"{prefix}USER: {turns[k]['value']} ASSISTANT:")
        answer = tokenizer(" " + turns[k + 1]["value"], add_special_tokens=False)["input_ids"]
        answer = answer + [tokenizer.eos_token_id]
        ids += prompt + answer
        labels += [IGNORE_INDEX] * len(prompt) + answer
    return ids[:max_length], labels[:max_length]


class InstructionDataset(Dataset):
    """One task's training samples as ``{input_ids, labels, image, id}`` (``image`` None without one)."""

    def __init__(
        self,
        samples: Sequence[dict[str, Any]],
        tokenizer: Any,
        image_root: str | os.PathLike[str],
        image_transform: Callable[[Any], torch.Tensor] | None = None,
        max_length: int = 2048,
    ) -> None:
        self.samples, self.tokenizer = list(samples), tokenizer
        self.image_root, self.image_transform, self.max_length = Path(image_root), image_transform, int(max_length)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, relative: str) -> torch.Tensor:
        from PIL import Image

        path = self.image_root / relative
        if not path.is_file():
            raise FileNotFoundError(f"image {relative!r} not found under data.image_root={str(self.image_root)!r}")
        image = Image.open(path).convert("RGB")
        if self.image_transform is None:
            import numpy as np

            return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return self.image_transform(image)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        ids, labels = encode_conversation(self.tokenizer, s["conversations"], self.max_length)
        image = self.load_image(s["image"]) if s.get("image") else None
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "image": image, "id": s.get("id")}


def collate(batch: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids`` (``pad_id``), ``labels`` (-100), ``attention_mask``; images stacked if all exist."""
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for r, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[r, :k], labels[r, :k], mask[r, :k] = b["input_ids"], b["labels"], 1
    images = [b["image"] for b in batch]
    stacked = torch.stack(images) if all(im is not None for im in images) else images
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "images": stacked,
        "ids": [b["id"] for b in batch],
    }


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """A ``transformers`` tokenizer from a local folder (never downloads)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"data.tokenizer={str(path)!r}: not a folder with a saved tokenizer")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_instruction_tasks(
    root: str | os.PathLike[str],
    tasks: Sequence[str],
    tokenizer: Any,
    train_file: str = "train.json",
    test_file: str = "test.json",
    image_transform: Callable[[Any], torch.Tensor] | None = None,
    max_length: int = 2048,
) -> list[tuple[InstructionDataset, list[dict[str, Any]]]]:
    """``[(training dataset, test questions)]`` for ``tasks`` in order, from the CoIN layout under ``root``."""
    if not tasks:
        raise ValueError("data.tasks is empty; name the tasks in training order (CoIN: " + ", ".join(COIN_TASKS) + ")")
    out = []
    for task in tasks:
        train = load_train_samples(task_file(root, task, train_file))
        test = load_test_samples(task_file(root, task, test_file))
        out.append((InstructionDataset(train, tokenizer, root, image_transform, max_length), test))
    return out
