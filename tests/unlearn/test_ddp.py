"""``python -m unlearn.run trainer=ddp_cpu`` (2 gloo processes, unlearn/distributed.py) against 1 process.

* ``ssd``: the importances are sharded by batch and all-reduced, so the unlearned weights equal the 1-process ones up to
  the order of float sums, and the report's accuracies are the same;
* ``finetune``: Lightning's Trainer with the run's DDP strategy (unlearn/training.py); each rank trains on its half of
  every 1-process batch (the engine's sharded sampler) and DDP averages the gradients; the only difference is the
  padding of the epoch's permutation when its size is odd (one duplicated sample; the fixture avoids it);
* both: rank 0 alone writes (one report, one checkpoint, the splits; rank 1 only its Hydra log).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cl.engine.checkpoint import load_checkpoint
from tests.helpers import compose_config, run_cl

REPO = Path(__file__).resolve().parents[2]
ACC_KEYS = ("retain_train_acc", "retain_test_acc", "forget_train_acc", "forget_test_acc", "test_acc")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, int]:
    """A 2-experience finetune checkpoint (2 batches per experience) and a seen class whose removal leaves an even
    retain set (so the last batch of finetune's epoch splits evenly over 2 ranks: no padding)."""
    from collections import Counter

    from omegaconf import OmegaConf

    from cl.experiment import build
    from unlearn.data import experience_keys, labels_of

    run_dir = tmp_path_factory.mktemp("cl_run")
    torch.manual_seed(0)
    run_cl(compose_config(["scenario.n_experiences=2", "logger=none", "+trainer.limit_train_batches=2"], run_dir))
    stream, _ = build(OmegaConf.create(load_checkpoint(run_dir / "checkpoints" / "task_1.ckpt")["config"]))
    labels = labels_of(stream, experience_keys(stream, [0, 1], "train"), "train")
    counts = Counter(labels)
    return run_dir, next(c for c in sorted(counts) if (len(labels) - counts[c]) % 2 == 0)


def _args(ckpt: Path, out: Path, cls: int, extra: list[str]) -> list[str]:
    return [f"checkpoint={ckpt}", f"hydra.run.dir={out}", f"forget.classes=[{cls}]", "eval.probe=false", *extra]


def _one_process(ckpt: Path, out: Path, cls: int, extra: list[str]) -> dict:
    import unlearn.resolvers  # noqa: F401
    from unlearn.pipeline import run_unlearning

    ov = [o for o in _args(ckpt, out, cls, extra) if not o.startswith("hydra.")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP rank (OMP_NUM_THREADS=1)
    try:
        return run_unlearning(compose_config(ov, out, shrink=False, config_name="unlearn"), out, ov)
    finally:
        torch.set_num_threads(threads)


def _two_processes(ckpt: Path, out: Path, cls: int, extra: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "SLURM_NTASKS", "SLURM_JOB_ID"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "unlearn.run", *_args(ckpt, out, cls, extra), "trainer=ddp_cpu"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def _written_once(out: Path) -> None:
    # rank 1 joined the group: a 2-process init_process_group only returns once both ranks are in (a lone rank 0
    # would wait out the test's timeout). Its Hydra log file is no longer written since run records are written by
    # the engine after the checks (issue 18), so the log is not where to look.
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["unlearned_task_1.ckpt"]
    names = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.endswith(".log"))
    # .lock: the output directory's ownership lock (issue 18), created by rank 0; unlearn_per_task.png: the
    # per-experience heatmap of the report (issue 17), written once by rank 0 like the other report files
    expected = [".lock", "unlearn_per_task.png", "unlearn_report.csv", "unlearn_report.json", "unlearn_report.png"]
    assert names == expected, names
    assert len(list((out / "splits").iterdir())) == 5
    assert sorted(p.name for p in (out / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]


def _compare(ddp_dir: Path, one_dir: Path, ref: dict, tol: float) -> float:
    ddp = json.loads((ddp_dir / "unlearn_report.json").read_text())
    for k in ACC_KEYS:
        assert ddp[k] == pytest.approx(ref[k], abs=1e-12), k
        assert ddp[f"original_{k}"] == pytest.approx(ref[f"original_{k}"], abs=1e-12), k
    assert ddp["per_task_acc"] == pytest.approx(ref["per_task_acc"], abs=1e-12)
    assert ddp["split_digest"] == ref["split_digest"]
    a = load_checkpoint(ddp_dir / "checkpoints" / "unlearned_task_1.ckpt")["state_dict"]
    b = load_checkpoint(one_dir / "checkpoints" / "unlearned_task_1.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < tol, worst
    return worst


@pytest.mark.slow  # ~2.3 min on a loaded 2-core machine (2 processes + the 1-process reference)
@pytest.mark.timeout(600)
def test_ssd_under_two_gloo_processes_equals_one_process(trained, tmp_path):
    run_dir, cls = trained
    # alpha 1: in the reference loader order the default alpha selects nothing on this barely trained fixture (as the
    # every-config check in test_pipeline.py)
    extra = ["unlearn_method=ssd", "unlearn_method.cache=false", "unlearn_method.alpha=1"]
    res = _two_processes(run_dir, tmp_path / "ddp", cls, extra)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.count("ssd: retain_test_acc=") == 1  # one summary: rank 0's
    _written_once(tmp_path / "ddp")
    ref = _one_process(run_dir, tmp_path / "one", cls, extra)
    assert ref["method_info"]["selected_parameters"] > 0  # SSD dampened something
    src = load_checkpoint(run_dir / "checkpoints" / "task_1.ckpt")["state_dict"]
    out = load_checkpoint(tmp_path / "one" / "checkpoints" / "unlearned_task_1.ckpt")["state_dict"]
    moved = max(float((src[k] - out[k]).abs().max()) for k in src if src[k].is_floating_point())
    worst = _compare(tmp_path / "ddp", tmp_path / "one", ref, tol=1e-6)
    assert moved > 1e3 * max(worst, 1e-9)
    ddp = json.loads((tmp_path / "ddp" / "unlearn_report.json").read_text())
    assert ddp["method_info"]["selected_parameters"] == ref["method_info"]["selected_parameters"]


@pytest.mark.slow  # ~2.2 min on a loaded 2-core machine
@pytest.mark.timeout(600)
def test_finetune_under_two_gloo_processes_trains_like_one_process(trained, tmp_path):
    run_dir, cls = trained
    extra = ["unlearn_method=finetune", "unlearn_method.epochs=1"]
    res = _two_processes(run_dir, tmp_path / "ddp", cls, extra)
    assert res.returncode == 0, res.stderr[-4000:]
    _written_once(tmp_path / "ddp")
    ref = _one_process(run_dir, tmp_path / "one", cls, extra)
    assert ref["sizes"]["retain_train"] % 2 == 0
    src = load_checkpoint(run_dir / "checkpoints" / "task_1.ckpt")["state_dict"]
    out = load_checkpoint(tmp_path / "one" / "checkpoints" / "unlearned_task_1.ckpt")["state_dict"]
    moved = max(float((src[k] - out[k]).abs().max()) for k in src if src[k].is_floating_point())
    worst = _compare(tmp_path / "ddp", tmp_path / "one", ref, tol=1e-5)
    print(f"finetune: weights differ by {worst:.3g} (moved {moved:.3g})")
    assert moved > 1e3 * max(worst, 1e-9)


def test_batch_shares_rebuild_the_one_process_batches(monkeypatch):
    """For importances whole batches go round-robin; the seeded generator gives the 1-process permutation on every
    rank (the training loader's shares: tests/unlearn/test_training.py)."""
    from torch.utils.data import DataLoader, TensorDataset

    import unlearn.distributed as ud

    data = TensorDataset(torch.arange(11), torch.zeros(11))
    one = [b[0].tolist() for b in DataLoader(data, 4, shuffle=True, generator=torch.Generator().manual_seed(5))]
    rounds = []
    for rank in range(2):
        monkeypatch.setattr(ud, "rank_and_world", lambda r=rank: (r, 2))
        loader = DataLoader(data, 4, shuffle=True, generator=torch.Generator().manual_seed(5))
        rounds.append([b[0].tolist() for b in ud.batch_share(loader)])
    assert sorted(sum(one, [])) == list(range(11)) and [len(b) for b in one] == [4, 4, 3]
    assert rounds == [[one[0], one[2]], [one[1]]]


@pytest.mark.slow  # replays the training run twice (2 processes and 1)
@pytest.mark.timeout(900)
def test_retrain_under_two_gloo_processes_replays_the_run_with_lightning_ddp(trained, tmp_path):
    """``retrain`` inside the unlearning ranks: the engine's Lightning Trainers find the process group (no new spawn)
    and train with DDP; rank 0 writes the retrained run once. Adam: weights within the tolerance of test_ddp_gloo."""
    run_dir, cls = trained
    # trainer=ddp_cpu replaces the saved trainer node (as composed: the default preset sets 5 epochs): give back the
    # recipe's 1 epoch of 2 batches per experience
    recipe = ["trainer.limit_train_batches=2", "trainer.max_epochs=1"]
    res = _two_processes(run_dir, tmp_path / "ddp", cls, ["unlearn_method=retrain", *recipe])
    assert res.returncode == 0, res.stderr[-4000:]
    _written_once(tmp_path / "ddp")
    retrained = tmp_path / "ddp" / "retrain_run" / "checkpoints"
    assert sorted(p.name for p in retrained.iterdir()) == ["initial.ckpt", "task_0.ckpt", "task_1.ckpt"]
    ref = _one_process(run_dir, tmp_path / "one", cls, ["unlearn_method=retrain"])
    ddp = json.loads((tmp_path / "ddp" / "unlearn_report.json").read_text())
    for k in ACC_KEYS:  # at most one sample of each split apart (identical in the measured run)
        assert abs(ddp[k] - ref[k]) <= 1.0 / ref["sizes"][k.removesuffix("_acc")] + 1e-12, (k, ddp[k], ref[k])
    a = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "unlearned_task_1.ckpt")["state_dict"]
    b = load_checkpoint(tmp_path / "one" / "checkpoints" / "unlearned_task_1.ckpt")["state_dict"]
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    print(f"retrain: weights differ by {worst:.3g}")
    assert worst < 1e-4
