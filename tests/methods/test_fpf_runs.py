"""Whole runs on the shrunk digits stream (1 epoch x 3 batches x 5 experiences = 15 steps): k-FPF's triggers across
experience boundaries, FPF as a callback on finetune (own buffer, checkpointed), FLOPs of ER vs finetune."""

from __future__ import annotations

import pytest
import torch

from cl.engine.checkpoint import load_checkpoint
from tests.helpers import run_cl


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_k_fpf_triggers_k_times_across_boundaries(make_cfg, tmp_path):
    m = run_cl(make_cfg("method=k_fpf", "method.k=4", "method.fpf_iterations=2", run_dir=tmp_path / "k"))
    # 15 steps; experiences end after steps 3, 6, 9, 12, 15; triggers at floor(i * 15 / 4)
    assert m["total_steps"] == 15 and m["fpf_triggers"] == 4
    assert m["fpf_trigger_steps"] == [3, 7, 11, 15]
    assert m["fpf_flops"] > 0 and m["flops"] >= m["fpf_flops"]  # triggers run inside fit: in the total
    ckpt = load_checkpoint(tmp_path / "k" / "checkpoints" / "task_4.ckpt")
    assert ckpt["state_dict"]["trigger_at"].tolist() == [3, 7, 11, 15]
    assert int(ckpt["state_dict"]["buffer.num_seen"]) == 15 * 32


def test_fpf_callback_on_finetune_and_flops_of_er(make_cfg, tmp_path):
    ft = run_cl(
        make_cfg("method=finetune", "+callbacks=[fpf,sensitivity]", "callbacks.fpf.iterations=3",
                 run_dir=tmp_path / "ft")
    )  # fmt: skip
    assert ft["fpf_triggers"] == 1 and ft["fpf_flops"] > 0
    assert ft["flops"] == ft["flops_fit"] + ft["fpf_flops"]
    assert ft["fpf_params_updated"] < ft["params_updated"] / 10
    assert set(ft["fpf_modules"]) == {"head", "backbone.model.pos_embed", "backbone.model.cls_token"}
    ckpt = load_checkpoint(tmp_path / "ft" / "checkpoints" / "task_4.ckpt")
    own = ckpt["callbacks"]["fpf"]["own_buffer"]
    assert own is not None and int(own["num_seen"]) == 15 * 32 and own["x"].shape == (200, 1, 16, 16)
    assert (tmp_path / "ft" / "sensitivity.csv").read_text().startswith("module,type,numel,init->0,0->1")
    er = run_cl(make_cfg("method=er", run_dir=tmp_path / "er"))
    # ER doubles every step's batch once the buffer holds data (all steps but the first): ratio (1 + 14*2)/15
    assert er["flops_fit"] / ft["flops_fit"] == pytest.approx(29 / 15, rel=0.02)
    assert er["params_updated"] == ft["params_updated"]


def test_derpp_with_auto_fpf_and_kd(make_cfg, tmp_path):
    m = run_cl(
        make_cfg("method=derpp", "+callbacks=fpf", "callbacks.fpf.modules=auto", "callbacks.fpf.top=2",
                 "callbacks.fpf.kd_beta=0.5", "callbacks.fpf.when=every_experience", "callbacks.fpf.iterations=2",
                 run_dir=tmp_path / "d")
    )  # fmt: skip
    assert m["fpf_triggers"] == 5 and len(m["fpf_modules"]) == 2
    ckpt = load_checkpoint(tmp_path / "d" / "checkpoints" / "task_4.ckpt")
    tracker = ckpt["callbacks"]["fpf"]["tracker"]
    assert tracker["labels"][-1] == [3, 4] and ckpt["callbacks"]["fpf"]["own_buffer"] is None  # the method's buffer
    drift = {n: v[1:] for n, v in tracker["drift"].items()}
    score = {n: sum(v) / len(v) for n, v in drift.items()}
    assert set(m["fpf_modules"]) == set(sorted(score, key=lambda n: -score[n])[:2])
    assert ckpt["state_dict"]["buffer.logits"].abs().sum() > 0
