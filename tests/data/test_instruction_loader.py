"""The instruction-task loader on files written in the CoIN layout (annotations/<Task>/{train,test}.json, images
relative to the root), tokenised by a local transformers tokenizer (built here, no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cl.data.instruction import (
    COIN_TASKS,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    collate,
    load_instruction_tasks,
    load_tokenizer,
)

pytest.importorskip("transformers")

TRAIN = {
    "ScienceQA": [
        {
            "id": "sqa-1",
            "image": "ScienceQA/images/train/1/image.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nWhich is a mammal?\nA. cat\nB. fish\nAnswer with the option's letter.",
                },
                {"from": "gpt", "value": "A"},
            ],
        },
        {"id": "sqa-2", "conversations": [{"from": "human", "value": "Is ice cold?"}, {"from": "gpt", "value": "yes"}]},
    ],
    "TextVQA": [
        {
            "id": "tv-1",
            "image": "TextVQA/train_images/abc.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is written?"},
                {"from": "gpt", "value": "stop"},
            ],
        }
    ],
}
TEST = {
    "ScienceQA": [{"question_id": "q1", "image": "ScienceQA/images/test/1/image.png", "text": "Which?", "answer": "A"}],
    "TextVQA": [{"question_id": "q2", "text": "What is written?", "answer": "stop"}],
}


def _coin_root(tmp_path):
    from PIL import Image

    root = tmp_path / "CoIN"
    for task in TRAIN:
        (root / "annotations" / task).mkdir(parents=True)
        (root / "annotations" / task / "train.json").write_text(json.dumps(TRAIN[task]))
        (root / "annotations" / task / "test.json").write_text(json.dumps(TEST[task]))
    for rel in ("ScienceQA/images/train/1/image.png", "TextVQA/train_images/abc.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(root / rel)
    return root


def _tokenizer(tmp_path, texts):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(t) for w in [w[0]]})
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(tmp_path / "tok")
    return load_tokenizer(tmp_path / "tok")


def test_loader_reads_the_coin_layout_and_masks_everything_but_the_answers(tmp_path):
    from cl.data.instruction import VICUNA_V1_SYSTEM

    root = _coin_root(tmp_path)
    texts = [t["value"] for ss in TRAIN.values() for s in ss for t in s["conversations"]]
    tok = _tokenizer(tmp_path, [*texts, VICUNA_V1_SYSTEM, "USER: ASSISTANT:"])
    tasks = load_instruction_tasks(root, ["ScienceQA", "TextVQA"], tok)
    assert [len(train) for train, _ in tasks] == [2, 1] and tasks[1][1][0]["answer"] == "stop"
    item = tasks[0][0][0]
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    assert ids[0] == tok.bos_token_id and ids.count(IMAGE_TOKEN_INDEX) == 1
    answer = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(answer) == "A</s>" or tok.convert_ids_to_tokens(answer) == ["A", "</s>"]
    assert labels[ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX
    assert item["image"].shape == (3, 8, 8) and abs(item["image"].max().item() - 200 / 255) < 1e-6
    assert tasks[0][0][1]["image"] is None
    batch = collate([tasks[0][0][0], tasks[0][0][1]], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"][1].sum()) == len(tasks[0][0][1]["input_ids"])
    assert isinstance(batch["images"], list)  # one sample has no image
    assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX)


def test_missing_files_and_bad_samples_stop_with_the_expected_path(tmp_path):
    root = _coin_root(tmp_path)
    tok = _tokenizer(tmp_path, ["x"])
    with pytest.raises(FileNotFoundError, match="annotations/GQA/train.json"):
        load_instruction_tasks(root, ["GQA"], tok)
    (root / "annotations" / "TextVQA" / "train.json").write_text(json.dumps([{"id": 1, "conversations": []}]))
    with pytest.raises(ValueError, match="alternating human / gpt"):
        load_instruction_tasks(root, ["TextVQA"], tok)
    with pytest.raises(ValueError, match="data.tasks is empty"):
        load_instruction_tasks(root, [], tok)
    assert COIN_TASKS[0] == "ScienceQA" and COIN_TASKS[-1] == "OCR-VQA" and len(COIN_TASKS) == 8
