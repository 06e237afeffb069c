"""Continual instruction tuning (cl/methods/instruction.py) on the tiny LLaVA-style model: the sefe_digits and
sefe_coin presets run one experience through the engine (sefe_coin on files in the CoIN layout with the tiny models
substituted); generated answers are scored per style into the three matrices; RegLoRA's term joins the loss after the
first task only when reg_weight > 0; the outcome counts are checkpointed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cl.engine.checkpoint import load_checkpoint

pytest.importorskip("transformers")
pytest.importorskip("peft")

FAST = ["logger=none", "+trainer.limit_train_batches=2", "data.batch_size=8", "data.source.eval_limit=6"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from cl.data.instruction_digits import ensure_digits_instruction

    root = tmp_path_factory.mktemp("data")
    ensure_digits_instruction(root / "sefe_digits")
    return root


@pytest.mark.slow  # ~40 s on a loaded 2-core machine (writes the ASD files, two greedy evaluations)
def test_sefe_digits_preset_runs_one_experience_and_reports_the_style_matrices(make_cfg, data_dir, tmp_path):
    from tests.helpers import run_cl

    cfg = make_cfg(
        "experiment=sefe_digits", f"paths.data_dir={data_dir}", "data.tasks=[DigitsMCQ]", *FAST, run_dir=tmp_path / "r"
    )
    assert cfg.data.asd.fraction == 0.2 and cfg.method.reg_weight == 2500.0  # SEFE = ASD + RegLoRA by default
    metrics = run_cl(cfg)
    m = metrics["style_matrices"]
    rates = [m["accuracy"][0][0], m["format_failure"][0][0], m["wrong_well_formed"][0][0]]
    assert sum(rates) == pytest.approx(1.0) and metrics["acc_matrix"] == [[m["accuracy"][0][0]]]
    assert metrics["mfn"] == metrics["avg_acc"] and metrics["maa"] == metrics["avg_inc_acc"]
    assert metrics["lora_matrices"] == 14  # q k v o gate up down x 2 layers
    asd = json.loads((data_dir / "asd" / "instruction_digits" / "DigitsMCQ" / "train_x20_seed0.json").read_text())
    assert sum(s["style"] != "mcq" for s in asd) == round(0.2 * len(asd))
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "task_0.ckpt")["state_dict"]
    counts = state["outcome_counts"][0, 0]
    assert counts.sum() == 6 and counts[0] / 6 == pytest.approx(m["accuracy"][0][0])  # resume keeps the counts
    assert not any("lora_" in k for k in state)  # merged between experiences


def _coin_root(tmp_path):
    from PIL import Image

    from cl.data.instruction_digits import write_word_tokenizer

    root = tmp_path / "CoIN"
    train = [
        {
            "id": f"sqa-{i}",
            "image": "ScienceQA/images/train/1/image.png" if i % 2 else None,
            "conversations": [
                {"from": "human", "value": ("<image>\n" if i % 2 else "") + "Which is a mammal?\nA. cat\nB. fish"},
                {"from": "gpt", "value": "A"},
            ],
        }
        for i in range(6)
    ]
    for s in train:
        if s["image"] is None:
            del s["image"]
    test = [{"question_id": f"q{i}", "text": "Which is a mammal?\nA. cat\nB. fish", "answer": "A"} for i in range(3)]
    (root / "annotations" / "ScienceQA").mkdir(parents=True)
    (root / "annotations" / "ScienceQA" / "train.json").write_text(json.dumps(train))
    (root / "annotations" / "ScienceQA" / "test.json").write_text(json.dumps(test))
    (root / "ScienceQA/images/train/1").mkdir(parents=True)
    Image.fromarray(np.full((20, 20, 3), 120, dtype=np.uint8)).save(root / "ScienceQA/images/train/1/image.png")
    from cl.data.instruction import VICUNA_V1_SYSTEM

    texts = [VICUNA_V1_SYSTEM, "USER: ASSISTANT:", *(t["value"] for s in train for t in s["conversations"])]
    write_word_tokenizer(texts, tmp_path / "tok")
    return root


@pytest.mark.slow
def test_sefe_coin_preset_on_the_coin_layout_with_tiny_models(make_cfg, tmp_path):
    from tests.helpers import run_cl

    root = _coin_root(tmp_path)
    gpu = make_cfg("experiment=sefe_coin", shrink=False)
    assert list(gpu.data.tasks)[0] == "ScienceQA" and len(gpu.data.tasks) == 8 and gpu.trainer.precision == "bf16-mixed"
    assert gpu.method.gradient_checkpointing and gpu.backbone.lm_dtype == "bfloat16" and gpu.method.rank == 128
    tiny = [
        "backbone=llava_tiny", "backbone.vision._target_=cl.backbones.Backbone", "backbone.vision.weights=null",
        "backbone.vision.in_chans=3", "trainer=cpu", "method.rank=4", "method.gradient_checkpointing=true",
        f"data.root={root}", f"data.tokenizer={tmp_path / 'tok'}", "data.tasks=[ScienceQA]", "data.num_workers=0",
        "data.eval_batch_size=2", "data.asd.fraction=0", "method.max_new_tokens=4",
    ]  # fmt: skip
    cfg = make_cfg("experiment=sefe_coin", *tiny, *FAST, run_dir=tmp_path / "r")
    metrics = run_cl(cfg)
    assert metrics["experiences_trained"] == 1 and metrics["lora_matrices"] == 14
    assert sum(metrics["style_matrices"][k][0][0] for k in ("accuracy", "format_failure", "wrong_well_formed")) == 1


def test_answers_are_scored_per_style_and_reglora_joins_the_loss_after_the_first_task(make_cfg, data_dir):
    from cl.experiment import build

    cfg = make_cfg("experiment=sefe_digits", f"paths.data_dir={data_dir}", "data.asd.fraction=0", *FAST)
    stream, method = build(cfg)
    tok = method.tokenizer
    mcq, short = stream.experiences[0].test, stream.experiences[1].test
    truth = [mcq[i]["answer"] for i in range(3)]
    wrong = "B" if truth[1] != "B" else "C"
    replies = {
        0: [truth[0], wrong, "This is the digit one"],
        1: [short[0]["answer"], "four", "it is a digit drawn as two loops"],
    }

    def fake_generate(ids, images, max_new_tokens, mask, eos):  # the decoded replies of tasks 0 and 1, in order
        j = 0 if fake_generate.calls < 1 else 1
        fake_generate.calls += 1
        return [tok(r, add_special_tokens=False)["input_ids"] for r in replies[j][: len(ids)]]

    fake_generate.calls = 0
    method.backbone.generate = fake_generate
    for j, exp in enumerate(stream.experiences):
        exp.test.questions = exp.test.questions[:3] if j < 2 else []
    method.experience_index.fill_(1)
    acc, _ = method.evaluate_stream(stream, 8, "cpu")
    assert acc == [pytest.approx(1 / 3), pytest.approx(1 / 3), 0.0, 0.0]
    assert method.outcome_counts[1, :2].tolist() == [[1, 1, 1], [1, 1, 1]]  # correct, wrong, malformed per task
    del method.backbone.generate

    # RegLoRA: no term on task 0, CE + reg_weight * penalty on task 1
    method.experience_index.fill_(-1)
    batch = stream.experiences[0].train.collate_fn([stream.experiences[0].train[i] for i in range(4)])
    method.on_experience_start(stream.experiences[0])
    assert torch.is_tensor(method.training_step(batch, 0))
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        method.training_step(batch, 0).backward()
        opt.step()
    method.on_experience_end(stream.experiences[0], None)
    method.on_experience_start(stream.experiences[1])
    for _, B in method.reglora.lora.factors().values():  # noqa: N806
        B.data.normal_()  # a fresh LoRA has B = 0: move it so the penalty is not zero
    out = method.training_step(batch, 0)
    ce = method(batch).loss
    assert out["train/reg_loss"] > 0
    assert out["loss"].item() == pytest.approx(ce.item() + 2500.0 * out["train/reg_loss"].item(), rel=1e-5)


def test_instruction_method_needs_the_llava_style_model(make_cfg):
    from cl.experiment import ConfigurationError, build

    with pytest.raises(ConfigurationError, match="backbone=llava"):
        build(make_cfg("method=instruction_lora"))
