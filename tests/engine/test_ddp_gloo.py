"""A 2-process gloo DDP run of ``python -m cl.run trainer=ddp_cpu`` against a 1-process run with the same global batch
(cl/engine/distributed.py): same batches in the same steps, so the same accuracy matrix, and weights and method state
(EWC's Fisher diagonal and anchor, LwF's old model) equal up to the float rounding of the gradient all-reduce.

Bound: the only numerical difference is the order of float sums (per-rank mean losses averaged by the all-reduce vs
one mean over the global batch); with ``limit_train_batches`` every step is a full global batch, so no padded sample
takes part. Measured (2 experiences x 3 steps): with SGD (lr 0.05) the weights differ by <= 6e-8 (float rounding),
test tolerance 1e-6. Adam divides each gradient by its own magnitude, so gradients that are (near) zero and pure
rounding noise, e.g. the attention key bias (softmax is shift-invariant), become steps of up to lr: with Adam (lr 1e-3,
weights moved up to 6e-3) they differ by <= 3.2e-5, tolerance 1e-4; EWC's Fisher diagonal by <= 2.3e-4 relative,
tolerance 1e-3. The accuracy matrices were identical in every measured case; the test allows one test sample per cell.
Replay (ER, DER++, SGD): the buffer gathers the ranks' batches interleaved (the 1-process order) and each rank replays
its share of the 1-process draw, so the buffers are identical (inputs and labels compared exactly) and the weights
differ by <= 1.2e-7 (ER); DER++'s stored logits by <= 4.8e-7 (logits of half batches), tolerance 1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cl.engine.checkpoint import load_checkpoint
from tests.helpers import cli_overrides, compose_config, run_cl

REPO = Path(__file__).resolve().parents[2]
# 2 experiences of 5 digits classes, 3 global batches of 32 each: the penalty/distillation terms act in experience 1
OVERRIDES = ["scenario.n_experiences=2", "+trainer.limit_train_batches=3", "logger=none", "data.batch_size=32"]
WEIGHT_TOL = 1e-4  # Adam
SGD_TOL = 1e-6


def _one_process(overrides: list[str], run_dir: Path) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP rank (OMP_NUM_THREADS=1)
    try:
        return run_cl(compose_config(overrides, run_dir))
    finally:
        torch.set_num_threads(threads)


def _two_processes(overrides: list[str], run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "SLURM_NTASKS", "SLURM_JOB_ID"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "cl.run", f"hydra.run.dir={run_dir}", "trainer=ddp_cpu", *cli_overrides(overrides)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)


SGD = ["method.optimizer._target_=torch.optim.SGD", "method.optimizer.lr=0.05"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("method", "extra", "tol"),
    [
        ("ewc", [], WEIGHT_TOL),
        ("finetune", SGD, SGD_TOL),
        pytest.param("er", SGD, SGD_TOL, marks=pytest.mark.slow),  # ~2 min on a loaded 2-core machine
        pytest.param("derpp", SGD, 1e-5, marks=pytest.mark.slow),
        pytest.param("finetune", [], WEIGHT_TOL, marks=pytest.mark.slow),
        pytest.param("lwf", [], WEIGHT_TOL, marks=pytest.mark.slow),
    ],
    ids=["ewc-adam", "finetune-sgd", "er-sgd", "derpp-sgd", "finetune-adam", "lwf-adam"],
)
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    tmp_path: Path, method: str, extra: list[str], tol: float
) -> None:
    overrides = [*OVERRIDES, f"method={method}", *extra]
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    res = _two_processes(overrides, ddp_dir)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in (ddp_dir / "train_ddp_process_1.log").read_text()
    ref = _one_process(overrides, one_dir)

    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    assert ddp["complete"] is True
    R_ddp, R_one = np.array(ddp["acc_matrix"]), np.array(ref["acc_matrix"])
    n_test = np.array([len(e) for e in _test_sets(one_dir)])
    assert np.all(np.abs(R_ddp - R_one) <= 1.0 / n_test[None, :] + 1e-12), (R_ddp, R_one)
    T_ddp, T_one = np.array(ddp["acc_matrix_task_aware"]), np.array(ref["acc_matrix_task_aware"])
    assert np.all(np.abs(T_ddp - T_one) <= 1.0 / n_test[None, :] + 1e-12), (T_ddp, T_one)

    # rank 0 alone wrote the run record; rank 1 only its Hydra log (hydra.output_subdir=null)
    info = json.loads((ddp_dir / "run_info.json").read_text())
    assert not any("train_ddp_process" in a for a in info["command"])
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == ["initial.ckpt", "task_0.ckpt", "task_1.ckpt"]

    a = load_checkpoint(ddp_dir / "checkpoints" / "task_1.ckpt")["state_dict"]
    b = load_checkpoint(one_dir / "checkpoints" / "task_1.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    start = load_checkpoint(one_dir / "checkpoints" / "initial.ckpt")["state_dict"]["head.weight"]
    assert (b["head.weight"] - start).abs().max() > 10 * tol  # training moved the weights well beyond the tol
    floats = [k for k in a if a[k].is_floating_point() and a[k].numel() and not k.startswith("fisher__")]
    worst = max((float((a[k].double() - b[k].double()).abs().max()), k) for k in floats)
    print(f"{method} {extra}: largest weight difference {worst}, matrices {R_ddp.tolist()} vs {R_one.tolist()}")
    assert worst[0] < tol, worst
    for k in a:  # integer/bool state (seen classes, flags) is identical
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
    if method == "ewc":  # the Fisher diagonal is the same (all-reduced sums and counts of identical full-data passes)
        fisher = [k for k in a if k.startswith("fisher__")]
        assert fisher and all(float(b[k].abs().sum()) > 0 for k in fisher[:3])
        for k in fisher:
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-7)  # measured 2.3e-4 rel
        assert bool(a["has_penalty"])
    if method in ("er", "derpp"):  # the replicated buffer is the 1-process buffer (same items, same slots)
        assert int(a["buffer.num_seen"]) == 2 * 3 * 32
        assert torch.equal(a["buffer.x"], b["buffer.x"]) and torch.equal(a["buffer.y"], b["buffer.y"])


def _test_sets(run_dir: Path) -> list:
    """The test sets of the reference run's stream (rebuilt from its saved config) for the 1-sample bound."""
    from omegaconf import OmegaConf

    from cl.experiment import build

    cfg = OmegaConf.create(load_checkpoint(run_dir / "checkpoints" / "task_1.ckpt")["config"])
    stream, _ = build(cfg)
    return [e.test for e in stream.experiences]
