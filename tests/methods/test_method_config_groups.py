"""Shared config groups of the methods (conf/method/optimizer, conf/method/scheduler, conf/method/buffer): a method's
YAML lists them in its defaults, so it states only its own keys; the command line switches a group for any method."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import compose_config

METHODS = ["finetune", "joint", "ewc", "lwf", "er", "derpp", "k_fpf", "coda_prompt", "l2p", "dualprompt"]
BUFFER_KEYS = ("buffer_size", "buffer_seed", "input_shape")


@pytest.mark.parametrize("method", METHODS)
def test_optimizer_group_switches_for_every_method(method, tmp_path):
    default = compose_config([f"method={method}"], tmp_path).method.optimizer
    assert default._target_ == "torch.optim.Adam" and default.lr == 0.001
    sgd = compose_config([f"method={method}", "method/optimizer=sgd", "method.optimizer.lr=0.05"], tmp_path)
    assert sgd.method.optimizer._target_ == "torch.optim.SGD" and sgd.method.optimizer.lr == 0.05
    assert "betas" not in sgd.method.optimizer or method in ("coda_prompt", "l2p", "dualprompt")


def test_prompt_methods_keep_the_reference_adam_and_cosine(tmp_path):
    for method in ("coda_prompt", "l2p", "dualprompt"):
        m = compose_config([f"method={method}", "trainer.max_epochs=7"], tmp_path).method
        assert list(m.optimizer.betas) == [0.9, 0.999] and m.optimizer.weight_decay == 0.0
        assert m.scheduler._target_ == "cl.modules.prompt_schedule.coda_cosine" and m.scheduler.epochs == 7
        assert m.scheduler_interval == "epoch"


def test_replay_methods_share_the_buffer_group(tmp_path):
    composed = {m: compose_config([f"method={m}", "seed=3"], tmp_path).method for m in ("er", "derpp", "k_fpf")}
    for m, cfg in composed.items():
        assert {k: cfg[k] for k in BUFFER_KEYS} == {"buffer_size": 200, "buffer_seed": 3, "input_shape": [1, 16, 16]}, m
    derpp = composed["derpp"]  # DER++ is ER's YAML plus its own keys
    assert derpp._target_ == "cl.methods.derpp.DERPP" and derpp.replay_batch_size == composed["er"].replay_batch_size
    assert "replay_batch_size" not in composed["k_fpf"]  # k-FPF's fine-tunes have their own batch size


def test_a_switched_optimizer_trains(tmp_path):
    """The group's node is what the method builds its optimizer from."""
    from cl.experiment import build

    cfg = compose_config(["method=er", "backbone=cnn_small", "method/optimizer=sgd", "method.buffer_size=50"], tmp_path)
    stream, method = build(cfg)
    method.on_experience_start(stream.experiences[0])
    opt = method.configure_optimizers()
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.1 and opt.defaults["momentum"] == 0.0
    assert method.buffer.capacity == 50
