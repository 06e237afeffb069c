"""Continual MIL through the engine on a tiny digit_bags stream: OWLoRA (frozen base after task 0, adapters trained
orthogonally, bag and instance matrices in metrics.json, strict checkpoints) and the existing baselines on the same
GDAT model."""

from __future__ import annotations

import json

import pytest
import torch

from cl.engine.checkpoint import load_checkpoint, load_method_state
from cl.engine.loop import StreamRunner
from cl.experiment import build

TINY = [
    "experiment=comel_digit_bags",
    "data.batch_size=1",
    "data.source.n_tasks=2",
    "data.source.n_train_bags=6",
    "data.source.n_test_bags=6",
    "backbone.dim=16",
    "backbone.num_heads=2",
    "backbone.depth=1",
    "+trainer.limit_train_batches=4",
]


def test_owlora_on_digit_bags(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "method.rank=2")
    stream, method = build(cfg)
    runner = StreamRunner(cfg, method, stream, tmp_path / "run")
    method.setup_stream(stream)
    # embed, qkv, proj, 2 MLP layers, the pooling hidden layer (its 1-output score layer is not adapted)
    assert method.seg_coef == 1.0 and len(method.lora_layers) == 6
    runner.run_experience(0)
    qkv = method.lora_layers["blocks.0.attn.qkv"]
    d = int(qkv.basis_rank)
    assert 0 < d <= 16 and float(qkv.basis_in[:d].norm()) > 0  # the SVD basis is stored after task 0
    base = {
        k: v.clone()
        for k, v in method.backbone.state_dict().items()
        if "adapters" not in k and not k.endswith(".active")
    }
    head = method.head.weight.detach().clone()
    runner.run_experience(1)
    for k, v in method.backbone.state_dict().items():
        if k in base:
            assert torch.equal(v, base[k]), f"{k} changed although only the adapters train after task 0"
    assert not torch.equal(method.head.weight, head)
    a = qkv.adapters[0]
    assert float(a.up.abs().max()) > 0  # the adapter trained ...
    ins, outs = qkv.older(0)
    assert float((a.down @ ins[0].T).abs().max()) < 1e-5  # ... orthogonally to the task-0 basis
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    mil = metrics["mil"]
    assert len(mil["bag_matrix"]) == 2 and len(mil["instance_matrix"][1]) == 2
    assert mil["bag_matrix"][1] == pytest.approx(runner.R[1].tolist())  # the bag accuracy is the engine's accuracy
    assert set(mil["instance"]) >= {"avg", "forgetting", "bwt"} and 0.0 <= mil["instance_matrix"][1][0] <= 1.0
    assert metrics["owlora_basis_rank"]["blocks.0.attn.qkv"] == d
    assert metrics["mil_instance_forgetting"] == mil["instance"]["forgetting"]
    _, fresh = build(cfg)
    fresh.setup_stream(stream)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "task_1.ckpt")["state_dict"]
    load_method_state(fresh, state, "task_1")
    x = stream.experiences[0].test[0][0][None]
    method.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), method(x))


@pytest.mark.parametrize(
    "method,extra",
    [
        ("finetune", []),
        ("ewc", []),
        ("lwf", []),
        ("er", ["data.pad_to=24", "method.input_shape=[24,65]", "method.replay_batch_size=1"]),
        ("derpp", ["data.pad_to=24", "method.input_shape=[24,65]", "method.replay_batch_size=1"]),
    ],
)
def test_baselines_run_on_the_mil_model(make_cfg, tmp_path, method, extra):
    cfg = make_cfg(*TINY, f"method={method}", *extra)
    stream, model = build(cfg)
    runner = StreamRunner(cfg, model, stream, tmp_path / "run")
    model.setup_stream(stream)
    for t in range(2):
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        runner.run_experience(t)
        assert any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items()), "nothing trained"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["mil"]["bag_matrix"]) == 2 and metrics["mil"]["instance_matrix"][1][1] is not None
