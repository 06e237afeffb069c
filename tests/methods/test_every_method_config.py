"""timm's habit: every YAML in conf/method/ is instantiated and trained for one experience, then evaluated."""

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


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_one_experience_and_checkpoints(make_cfg, tmp_path, method):
    cfg = make_cfg(f"method={method}", "+trainer.limit_train_batches=2", "scenario.n_experiences=5")
    stream, model = build(cfg)
    runner = StreamRunner(cfg, model, stream, tmp_path / "run")
    model.setup_stream(stream)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner.run_experience(0)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point()), "nothing trained"
    row = runner.R[0]
    assert 0.0 < row[0] <= 1.0 and np.all(row[1:] == 0.0)  # class-IL: unseen classes are masked
    # the checkpoint of experience 0 loads strictly into a freshly built method
    _, fresh = build(cfg)
    load_method_state(fresh, load_checkpoint(tmp_path / "run" / "checkpoints" / "task_0.ckpt")["state_dict"], "t0")
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, after[k]), k
