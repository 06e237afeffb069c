"""timm's habit: every YAML in conf/method/ is instantiated and trained for two experiences on a ViT, evaluated and
checkpointed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cl.engine.checkpoint import load_checkpoint, load_method_state
from cl.engine.loop import StreamRunner
from cl.experiment import build

# instruction_* generate answers with a LLaVA-style model on an instruction stream: tests/methods/test_instruction.py
OWN_STREAM = ("instruction_",)
METHODS = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[2] / "conf" / "method").glob("*.yaml")
    if not p.stem.startswith(OWN_STREAM)
)


# Smaller settings for the methods whose defaults cost minutes here (k-FPF: 10 triggers x 50 FPF steps would fire at
# every one of the test's steps); the code paths stay the same (3 triggers, the first one inside experience 0).
SMALLER = {m: ["method.k=3", "method.fpf_iterations=5"] for m in ("k_fpf", "k_fpf_kd")}
EXPERIENCES = 2


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_two_experiences_on_a_vit_and_checkpoints(make_cfg, tmp_path, method):
    """Every method through experiences 0 and 1 on the tiny ViT (timm's fused attention), so that what runs only from
    the second experience on (EWC's penalty over its Fisher, LwF's distillation, replay, new prompt components) runs
    too (issue 20: EWC crashed in its second experience and this test trained one experience)."""
    _two_experiences(make_cfg, tmp_path, method, "+trainer.limit_train_batches=2")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_two_experiences_on_a_gpu(make_cfg, tmp_path, method):
    """The same on one CUDA device (``trainer=gpu``): every method's state (buffers, key positions, masks, prompts)
    must follow the model onto the GPU; the first GPU check found RegLoRA's key positions left on the CPU."""
    _two_experiences(make_cfg, tmp_path, method, "trainer=gpu", "trainer.limit_train_batches=2")


def _two_experiences(make_cfg, tmp_path, method: str, *trainer: str) -> None:
    cfg = make_cfg(
        f"method={method}", "backbone=vit_tiny", *trainer, "scenario.n_experiences=5", *SMALLER.get(method, [])
    )
    stream, model = build(cfg)
    runner = StreamRunner(cfg, model, stream, tmp_path / "run")
    model.setup_stream(stream)
    for t in range(EXPERIENCES):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        runner.run_experience(t)
        after = model.state_dict()
        changed = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(before[k], v)]
        assert changed, f"nothing trained in experience {t}"
        row = runner.R[t]
        assert 0.0 < row[: t + 1].max() <= 1.0 and np.all(row[t + 1 :] == 0.0)  # class-IL: unseen classes masked
    assert all(b.grad_fn is None for b in model.buffers()), "a buffer carries an autograd graph between experiences"
    # the checkpoint of the last experience loads strictly into a freshly built method
    last = EXPERIENCES - 1
    _, fresh = build(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / f"task_{last}.ckpt")["state_dict"]
    load_method_state(fresh, state, f"t{last}")
    for k, v in fresh.state_dict().items():
        assert torch.equal(v.cpu(), after[k].cpu()), k


@pytest.mark.slow  # 82 s at load 18 on 2 cores; the default suite trains EWC through two experiences above
def test_ewc_penalty_backpropagates_after_a_reference_fisher(make_cfg, tmp_path, monkeypatch):
    """EWC's second experience on a ViT when its Fisher comes from the torch.func reference (the fast backend's
    fallback), the path of issue 20's crash ("derivative for ..._flash_attention_..._backward is not implemented")."""
    import kernels.fisher

    full = kernels.fisher.fisher_diagonal
    monkeypatch.setattr(kernels.fisher, "fisher_diagonal", lambda *a, **k: full(*a, **{**k, "backend": "reference"}))
    cfg = make_cfg("method=ewc", "backbone=vit_tiny", "+trainer.limit_train_batches=2", "method.fisher_max_batches=1")
    stream, model = build(cfg)
    runner = StreamRunner(cfg, model, stream, tmp_path / "run")
    model.setup_stream(stream)
    runner.run_experience(0)
    assert bool(model.has_penalty) and all(b.grad_fn is None for b in model.buffers())
    runner.run_experience(1)
    assert runner.R[1, 1] > 0.0
