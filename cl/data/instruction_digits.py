"""An offline multimodal instruction stream from scikit-learn's digits, in the CoIN layout (cl/data/instruction.py), so
that the continual instruction-tuning pipeline of SEFE (arXiv 2505.02486) runs on this machine with no download.

Four tasks that differ in answer style as CoIN's do (:data:`DIGIT_TASKS`, in training order):

* ``DigitsMCQ``: digits 0-4, "Which digit is shown?" with four options (the truth + three other digits of 0-4,
  seeded), answered by the option letter (ScienceQA's style);
* ``DigitsShort``: digits 5-9, answered by the digit's name (``short``, the VQA tasks' style);
* ``Parity``: every digit, "Is this digit even?", answered Yes / No (``yes_no``);
* ``DigitsBrief``: every digit, "Describe the digit briefly.", answered by a ~20-word description (``brief``).

Every sample carries ``answer`` (the ground truth to score), ``style`` and the fields ASD reads (cl/data/
instruction_asd.py): ``distractors`` (the other digit names of its task), ``brief`` and ``detail`` explanations
(template sentences from the label: the digit's name, parity and stroke shape), so ``diversify`` needs no generator.
The images are the fixed stratified 75/25 split of cl/data/digits.py, saved as 8x8 grey PNGs under
``root/digits/{train,test}/<index>.png``; :func:`write_digits_instruction` writes everything atomically, and a
word-level ``transformers`` tokenizer over the stream's words (and ASD's, :func:`write_word_tokenizer`) under
``root/tokenizer``, so a tiny causal LM can be trained on the stream with no download; :func:`ensure_digits_instruction`
writes it all once (under a file lock, so parallel runs of a sweep share one copy).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from cl.utils.atomic import write_json

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SHAPES = (
    "a closed oval loop",
    "a single vertical stroke",
    "a curve on top and a flat base",
    "two bumps open to the left",
    "an open angle crossed by a vertical stroke",
    "a flat top, a short stem and a round belly",
    "a curved stem that closes into a loop at the bottom",
    "a flat bar on top that falls to the bottom left",
    "two stacked loops",
    "a loop on top with a straight tail",
)
DIGIT_TASKS = ("DigitsMCQ", "DigitsShort", "Parity", "DigitsBrief")
TASK_STYLES = {"DigitsMCQ": "mcq", "DigitsShort": "short", "Parity": "yes_no", "DigitsBrief": "brief"}
TASK_DIGITS = {"DigitsMCQ": range(0, 5), "DigitsShort": range(5, 10), "Parity": range(10), "DigitsBrief": range(10)}


def brief_description(digit: int) -> str:
    parity = "even" if digit % 2 == 0 else "odd"
    return f"This is the digit {NAMES[digit]}, an {parity} number, drawn as {SHAPES[digit]} in the image."


def detail_description(digit: int) -> str:
    parity = "even" if digit % 2 == 0 else "odd"
    return (
        f"The image shows a handwritten digit on a dark background. Its strokes form {SHAPES[digit]}, which is the "
        f"usual way of writing {NAMES[digit]}. The shape cannot be confused with its neighbours, so the digit is "
        f"{NAMES[digit]}, and since {NAMES[digit]} is {parity}, it is an {parity} number."
    )


def make_sample(task: str, index: int, digit: int, image: str, rng: random.Random, split: str) -> dict[str, Any]:
    """One sample of ``task`` in the CoIN layout (``conversations`` for train, ``question_id``/``text`` for test)."""
    names = [NAMES[d] for d in TASK_DIGITS[task] if d != digit]
    style = TASK_STYLES[task]
    if task == "DigitsMCQ":
        options = [NAMES[digit], *rng.sample(names, 3)]
        rng.shuffle(options)
        listed = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options))
        question = f"<image>\nWhich digit is shown?\n{listed}\nAnswer with the option's letter from the given choices."
        answer = "ABCD"[options.index(NAMES[digit])]
    elif task == "DigitsShort":
        question, answer = "<image>\nWhich digit is shown? Answer with a single word.", NAMES[digit]
    elif task == "Parity":
        question, answer = "<image>\nIs this digit even? Answer Yes or No.", "Yes" if digit % 2 == 0 else "No"
    else:
        question, answer = "<image>\nDescribe the digit briefly.", brief_description(digit)
    short = NAMES[digit] if task != "Parity" else answer.lower()
    sample: dict[str, Any] = {
        "image": image,
        "style": style,
        "answer": answer if style in ("mcq", "yes_no") else short,
        "distractors": names if task != "Parity" else ["yes" if answer == "No" else "no"],
        "brief": brief_description(digit),
        "detail": detail_description(digit),
        "label": digit,
    }
    if split == "train":
        sample["id"] = f"{task}-{index}"
        sample["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    else:
        sample["question_id"] = f"{task}-{index}"
        sample["text"] = question
    return sample


def write_digits_instruction(root: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the four tasks under ``root`` (annotations/<Task>/{train,test}.json + digits/<split>/<i>.png)."""
    import numpy as np
    from PIL import Image

    from cl.data.digits import load_digits

    root = Path(root)
    splits = load_digits(image_size=8, channels=1)
    for split, data in (("train", splits.train), ("test", splits.test)):
        (root / "digits" / split).mkdir(parents=True, exist_ok=True)
        for i in range(len(data)):
            pixels = (data.images[i, 0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(root / "digits" / split / f"{i}.png")
        for task in DIGIT_TASKS:
            rng = random.Random(f"{seed}-{task}-{split}")
            samples = [
                make_sample(task, i, int(y), f"digits/{split}/{i}.png", rng, split)
                for i, y in enumerate(data.targets)
                if int(y) in TASK_DIGITS[task]
            ]
            write_json(root / "annotations" / task / f"{split}.json", samples)
    return root


def _words(texts: list[str]) -> list[str]:
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    return sorted({w for t in texts for w, _ in split(t)})


def write_word_tokenizer(texts: list[str], path: str | os.PathLike[str]) -> Path:
    """A word-level fast tokenizer over the words of ``texts`` (BERT pre-tokenisation; WordPiece's decoder puts the
    punctuation back against its word) with ``<pad> <unk> <s> </s>``, saved under ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *_words(texts)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(str(path))
    return Path(path)


def stream_texts(root: str | os.PathLike[str]) -> list[str]:
    """Every text the stream, ASD's conversions and the vicuna_v1 template can produce."""
    import json

    from cl.data.instruction import VICUNA_V1_SYSTEM
    from cl.data.instruction_asd import FORMAT_PROMPTS

    texts = [VICUNA_V1_SYSTEM, "USER: ASSISTANT:", "Is the answer ?", "A. B. C. D. Yes No yes no", *NAMES]
    texts += list(FORMAT_PROMPTS.values())
    for task in DIGIT_TASKS:
        for split in ("train", "test"):
            for s in json.loads((Path(root) / "annotations" / task / f"{split}.json").read_text()):
                texts += [s.get("text", ""), s["brief"], s["detail"], *s["distractors"], s["answer"]]
                texts += [t["value"] for t in s.get("conversations", [])]
    return texts


def ensure_digits_instruction(root: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the stream and its tokenizer under ``root`` unless a complete copy is there (``root/tokenizer``)."""
    import fcntl

    root = Path(root)
    if (root / "tokenizer" / "tokenizer_config.json").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".write.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "tokenizer" / "tokenizer_config.json").is_file():
            write_digits_instruction(root, seed)
            staging = root / ".tokenizer.tmp"
            if staging.exists():  # an interrupted earlier attempt
                import shutil

                shutil.rmtree(staging)
            write_word_tokenizer(stream_texts(root), staging)
            staging.rename(root / "tokenizer")
    return root
