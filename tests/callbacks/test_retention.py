"""Retention curves (cl/callbacks/retention.py, cl/analysis/retention.py): the scores on hand-made numbers, a stream
whose answer is known (memorise a tiny set, then train on disjoint data), and the engine's contracts (training
unchanged by the probes, probe time not counted as training, resume continues the curve exactly)."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from cl.analysis.retention import geometric_points, loss_auc, mean_curves, two_afc
from cl.callbacks.retention import RetentionCallback
from cl.engine.checkpoint import load_checkpoint
from tests.helpers import compose_config, run_cl


def test_two_afc_and_auc_on_hand_made_losses():
    seen = torch.tensor([0.1, 0.5, 2.0, 1.0])
    unseen = torch.tensor([0.2, 0.5, 1.0, 3.0])
    # pairs: win, tie, loss, win -> (1 + 0.5 + 0 + 1) / 4
    assert two_afc(seen, unseen) == pytest.approx(0.625)
    # all 16 pairs: P(seen < unseen) + 0.5 P(tie), counted by hand
    wins = sum(float(s < u) + 0.5 * float(s == u) for s in seen for u in unseen)
    assert loss_auc(seen, unseen) == pytest.approx(wins / 16)
    assert loss_auc(seen, seen + 10) == pytest.approx(1.0) and two_afc(seen + 10, seen) == 0.0
    from torchmetrics.functional.classification import binary_auroc  # the library's ROC area, on random losses

    a, b = torch.rand(40, generator=torch.Generator().manual_seed(0)), torch.rand(30) + 0.2
    target = torch.cat([torch.ones(40), torch.zeros(30)]).long()
    assert loss_auc(a, b) == pytest.approx(float(binary_auroc(-torch.cat([a, b]), target)), abs=1e-6)
    with pytest.raises(ValueError, match="one length"):
        two_afc(seen, unseen[:2])


def test_schedules():
    assert sorted(p for p in geometric_points(2.0) if p <= 64) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert sorted(p for p in geometric_points(1.5) if p <= 8) == [0, 1, 2, 3, 5, 8]
    lin = RetentionCallback(schedule="linear", every=5)
    assert [u for u in range(16) if lin.due(u)] == [0, 5, 10, 15]
    with pytest.raises(ValueError, match="callbacks.retention.schedule='log'; allowed"):
        RetentionCallback(schedule="log")
    with pytest.raises(ValueError, match="callbacks.retention.growth=1.0"):
        RetentionCallback(growth=1.0)


def test_mean_curves_keeps_common_points_with_std():
    a = [
        {
            "experience": 0,
            "updates_since_exposure": u,
            "recall": r,
            "recognition_2afc": 0.9,
            "recognition_auc": 0.9,
            "unseen_recall": 0.1,
        }
        for u, r in ((0, 1.0), (1, 0.5), (2, 0.4))
    ]
    b = [dict(r, recall=r["recall"] - 0.2) for r in a[:2]]
    rows = mean_curves([a, b])
    assert [r["updates_since_exposure"] for r in rows] == [0, 1]
    assert rows[0]["recall"] == pytest.approx(0.9) and rows[0]["recall_std"] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------ known answer
def _noise_experience(index: int, n: int, gen: torch.Generator, classes: list[int]) -> Any:
    """Random inputs with random labels from ``classes``: learnable only by memorising (test = other noise)."""

    def split(m: int) -> TensorDataset:
        x = torch.randn(m, 32, generator=gen)
        y = torch.tensor(classes)[torch.randint(len(classes), (m,), generator=gen)]
        ds = TensorDataset(x, y)
        ds.targets = y.tolist()
        return ds

    return SimpleNamespace(index=index, classes=classes, train=split(n), test=split(4 * n))


def test_memorised_set_recall_falls_and_recognition_stays_above_chance(tmp_path):
    """Experience 0: 16 noise vectors with random labels, memorised (recall 1 at exposure). Experience 1 trains on
    256 other noise vectors with the same labels: recall of the memorised set falls, while its loss stays below that
    of never-seen noise of the same classes (recognition above chance): the paper's recall/recognition dissociation
    (measured: recall 1.0 up to 32 updates, 0.81 at 64, 0.56 at 128; 2AFC 1.0, 0.94, 0.88)."""
    import lightning as L
    from torch import nn
    from torch.utils.data import DataLoader

    from cl.methods.finetune import Finetune

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    exps = [_noise_experience(0, 16, gen, [0, 1, 2, 3]), _noise_experience(1, 256, gen, [0, 1, 2, 3])]
    backbone = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
    backbone.num_features = 64
    method = Finetune(
        backbone=backbone, num_classes=4, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), name="finetune"
    )
    method.scenario = "domain"
    cb = RetentionCallback(probe_size=16, schedule="geometric", seed=0)
    runner = SimpleNamespace(method=method, run_dir=tmp_path, stream=SimpleNamespace(experiences=exps))
    for exp, epochs in ((exps[0], 150), (exps[1], 10)):
        method.on_experience_start(exp)
        trainer = L.Trainer(
            max_epochs=epochs,
            callbacks=[cb],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        trainer.fit(method, DataLoader(exp.train, batch_size=16, shuffle=True))
        cb.on_experience_end(runner, exp)
    rows = [r for r in cb.rows if r["experience"] == 0]
    assert rows[0]["updates_since_exposure"] == 0 and rows[0]["recall"] == 1.0
    assert rows[0]["recognition_2afc"] > 0.9
    assert [r["updates_since_exposure"] for r in rows] == [0, 1, 2, 4, 8, 16, 32, 64, 128]  # 160 updates after
    assert rows[-1]["recall"] <= rows[0]["recall"] - 0.3  # recall falls ...
    assert min(r["recognition_2afc"] for r in rows) > 0.7  # ... recognition stays above chance
    assert min(r["recognition_auc"] for r in rows) > 0.7
    with open(tmp_path / "retention.csv") as f:
        assert len(list(csv.DictReader(f))) == len(cb.rows)
    assert (tmp_path / "retention.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ engine contracts
OVERRIDES = ["+trainer.limit_train_batches=3", "logger=none", "scenario.n_experiences=2", "trainer.max_epochs=3"]
RETENTION = ["+callbacks=retention", "callbacks.retention.probe_size=16"]


def _single_thread(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_cl(compose_config(overrides, run_dir))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def with_retention(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("retention")
    return run_dir, _single_thread([*OVERRIDES, *RETENTION], run_dir)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_probes_leave_training_unchanged(with_retention, tmp_path):
    run_dir, metrics = with_retention
    plain = _single_thread(OVERRIDES, tmp_path / "plain")
    np.testing.assert_array_equal(metrics["acc_matrix"], plain["acc_matrix"])
    assert metrics["flops"] == plain["flops"]  # probe forwards are not training FLOPs
    final = load_checkpoint(tmp_path / "plain" / "checkpoints" / "task_1.ckpt")["state_dict"]
    for key, value in load_checkpoint(run_dir / "checkpoints" / "task_1.ckpt")["state_dict"].items():
        assert torch.equal(value, final[key]), key
    rows = _rows(run_dir / "retention.csv")
    # 2 experiences x 9 updates: set 0 is scored at 0, 1, 2, 4, 8 updates since exposure, set 1 at 0
    assert [(r["experience"], r["updates_since_exposure"], r["step"]) for r in rows] == [
        ("0", "0", "9"),
        ("0", "1", "10"),
        ("0", "2", "11"),
        ("0", "4", "13"),
        ("0", "8", "17"),
        ("1", "0", "18"),
    ]
    assert metrics["retention_seconds"] > 0 and "retention_recall" in metrics


def test_probe_time_is_not_training_time(tmp_path):
    hook = ["+callbacks.slow._target_=tests.callbacks.test_retention.SlowMeasurement"]
    metrics = _single_thread([*OVERRIDES, *hook], tmp_path / "run")
    # 2 x SLEEP were spent measuring inside the timed span; training itself takes ~0.3-1.7 s an experience here
    assert metrics["seconds"] < 1.5 * SlowMeasurement.SLEEP


class SlowMeasurement(RetentionCallback):
    """Test hook: a measuring callback that takes SLEEP seconds after each experience and reports them."""

    SLEEP = 5.0

    def on_experience_end(self, runner: Any, experience: Any) -> None:
        time.sleep(self.SLEEP)
        self.measurement_seconds += self.SLEEP


def test_resume_continues_the_curve_without_gap_or_duplicate(with_retention, tmp_path):
    ref_dir, _ = with_retention
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    (run_dir / "checkpoints" / "task_1.ckpt").unlink()  # stopped while training experience 1: the csv holds rows
    (run_dir / "metrics.json").unlink()  # written during it, which the resumed run must not duplicate
    resumed = _single_thread([*OVERRIDES, *RETENTION, f"resume={run_dir}"], tmp_path / "resume_out")
    assert resumed["complete"] is True
    assert _rows(run_dir / "retention.csv") == _rows(ref_dir / "retention.csv")


def test_aggregate_averages_retention_curves_over_seeds(tmp_path):
    from experiments.aggregate import aggregate
    from tests.experiments.test_aggregate import make_run

    root = tmp_path / "sweep"
    for i, (seed, r0) in enumerate([(0, 1.0), (1, 0.8)]):
        run = make_run(root, str(i), "finetune", seed, 0.5)
        lines = ["experience,updates_since_exposure,step,recall,recognition_2afc,recognition_auc,unseen_recall"]
        lines += [f"0,0,5,{r0},0.9,0.95,0.2", f"0,1,6,{r0 - 0.5},0.8,0.85,0.2"]
        lines += ["0,2,7,0.1,0.7,0.7,0.2"] if seed == 0 else []  # a point only one seed reached: not averaged
        (run / "retention.csv").write_text("\n".join(lines) + "\n")
    files = aggregate(root)["files"]
    out = root / "aggregate" / "retention_finetune__digits__class.csv"
    assert out in files and out.with_suffix(".png") in files
    rows = _rows(out)
    assert [(r["experience"], r["updates_since_exposure"], r["n"]) for r in rows] == [("0", "0", "2"), ("0", "1", "2")]
    assert float(rows[0]["recall"]) == pytest.approx(0.9) and float(rows[0]["recall_std"]) == pytest.approx(0.1)
    assert float(rows[1]["recognition_2afc"]) == pytest.approx(0.8)


class _SuccessorLM(torch.nn.Module):
    """A causal 'LM' that always predicts token + 1 (mod V): it has memorised the counting sequences."""

    V = 16

    def forward(self, ids: torch.Tensor) -> Any:
        return SimpleNamespace(logits=torch.nn.functional.one_hot((ids + 1) % self.V, self.V).float() * 10)


def test_lm_recall_is_exact_match_of_the_cued_completion():
    from cl.analysis.retention import lm_scores

    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 5, 0], [7, 8, 9, 10, 0, 0]])
    att = torch.tensor([[1] * 6, [1] * 6, [1, 1, 1, 1, 0, 0]])  # right padding: the third sequence has 4 tokens
    match, loss = lm_scores(_SuccessorLM(), ids, att, cue_fraction=0.5, device=torch.device("cpu"))
    assert match.tolist() == [True, False, True]
    assert loss[0] < 1e-3 < loss[1] and loss[2] < 1e-3  # padding is not scored


def test_lm_scores_run_on_a_tiny_llama():
    transformers = pytest.importorskip("transformers")
    from cl.analysis.retention import lm_scores

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(32, (2, 8))
    match, loss = lm_scores(model, ids, torch.ones_like(ids), cue_fraction=0.5, device=torch.device("cpu"))
    assert match.shape == (2,) and loss.shape == (2,)
    # the loss is the mean next-token NLL of the sequence, as the model's own loss computes it
    expected = model(ids[:1], labels=ids[:1]).loss
    assert loss[0] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_retention_under_two_gloo_processes_equals_one_process(tmp_path):
    """trainer=ddp_cpu: every rank scores the whole probe set on its replica (no collective), rank 0 writes; the same
    global batches give the same curve as one process (losses differ by float rounding only)."""
    from tests.engine.test_ddp_gloo import SGD, _one_process, _two_processes

    overrides = [*OVERRIDES, *RETENTION, *SGD, "data.batch_size=32"]
    _one_process(overrides, tmp_path / "one")
    proc = _two_processes(overrides, tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _rows(tmp_path / "one" / "retention.csv"), _rows(tmp_path / "two" / "retention.csv")
    assert [(r["experience"], r["updates_since_exposure"], r["step"], r["recall"]) for r in two] == [
        (r["experience"], r["updates_since_exposure"], r["step"], r["recall"]) for r in one
    ]
    for a, b in zip(one, two, strict=True):
        assert float(a["recognition_auc"]) == pytest.approx(float(b["recognition_auc"]), abs=0.02)
