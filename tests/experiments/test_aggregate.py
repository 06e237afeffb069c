"""experiments.aggregate on hand-written sweep folders: complete vs incomplete runs, grouping by method and setting,
mean ± sample std over seeds, CSV + Markdown + heatmap PNG, exit codes."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from experiments.aggregate import aggregate, main


def _matrix(a: float, n: int = 3) -> list[list[float]]:
    """A lower-triangular-ish matrix whose entries depend on ``a`` (upper part = 0.1: untrained)."""
    return [[round(min(1.0, a + 0.05 * (i - j)), 4) if j <= i else 0.1 for j in range(n)] for i in range(n)]


def make_run(
    root: Path, name: str, method: str, seed: int, avg_acc: float | None, *, lr: str | None = None,
    data: str = "digits", metrics: dict | None = None, write_metrics: bool = True,
) -> Path:  # fmt: skip
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "method": {"_target_": f"cl.methods.{method}.{method.title()}", "lr": lr},
           "data": {"name": data}, "scenario": {"name": "class"}}  # fmt: skip
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    overrides = [f"seed={seed}", f"method={method}"] + ([f"method.lr={lr}"] if lr else [])
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if write_metrics:
        m = {"acc_matrix": _matrix(avg_acc or 0.5), "avg_acc": avg_acc, "forgetting": 0.1 * seed, "seconds": 10 + seed,
             "complete": True, "seed": seed, "method": method, "num_experiences": 3}  # fmt: skip
        m.update(metrics or {})
        (run / "metrics.json").write_text(json.dumps(m))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for i, (seed, acc) in enumerate([(0, 0.8), (1, 0.7), (2, 0.9)]):
        make_run(root, str(i), "finetune", seed, acc)
    for i, (seed, acc) in enumerate([(0, 0.6), (1, 0.5)]):
        make_run(root, str(3 + i), "ewc", seed, acc)
    make_run(root, "5", "ewc", 2, None, write_metrics=False)  # killed before its first metrics.json
    make_run(root, "6", "ewc", 3, 0.99, metrics={"complete": False, "acc_matrix": _matrix(0.99)[:2]})
    (root / "7").mkdir()
    (root / "7" / "metrics.json").write_text('{"acc_matrix": [[0.5')  # torn file
    (root / ".submitit" / "12_0").mkdir(parents=True)
    (root / ".submitit" / "12_0" / "metrics.json").write_text("{}")  # never a run
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_groups_means_and_stds(sweep: Path) -> None:
    result = aggregate(sweep)
    rows = {r["method"]: r for r in _read_csv(sweep / "aggregate" / "summary.csv")}
    assert set(rows) == {"finetune", "ewc"}
    assert rows["finetune"]["n_runs"] == "3" and rows["ewc"]["n_runs"] == "2"
    assert float(rows["finetune"]["avg_acc_mean"]) == pytest.approx(0.8)
    assert float(rows["finetune"]["avg_acc_std"]) == pytest.approx(statistics.stdev([0.8, 0.7, 0.9]))
    assert float(rows["ewc"]["avg_acc_mean"]) == pytest.approx(0.55)  # the incomplete 0.99 run is not counted
    assert float(rows["ewc"]["forgetting_mean"]) == pytest.approx(0.05)
    assert rows["ewc"]["seeds"] == "0 1"
    assert rows["finetune"]["data.name"] == "digits" and rows["finetune"]["scenario.name"] == "class"
    assert result["metrics"][:2] == ["avg_acc", "forgetting"]


def test_incomplete_runs_listed_separately(sweep: Path) -> None:
    result = aggregate(sweep)
    assert sorted(r.path.name for r in result["incomplete"]) == ["5", "6", "7"]
    md = (sweep / "aggregate" / "summary.md").read_text()
    table, incomplete = md.split("## Incomplete runs (3), not counted")
    assert "0.5500 ± 0.0707" in table and "0.8000 ± 0.1000" in table
    assert "`5`: no metrics.json" in incomplete and "`6`: metrics.json says complete: false" in incomplete
    assert "`7`: unreadable metrics.json" in incomplete
    runs = {r["run"]: r for r in _read_csv(sweep / "aggregate" / "runs.csv")}
    assert len(runs) == 8 and not any(k.startswith(".submitit") for k in runs)
    assert runs["6"]["status"] == "incomplete" and runs["0"]["status"] == "complete"


def test_heatmap_is_the_mean_matrix(sweep: Path) -> None:
    result = aggregate(sweep)
    pngs = sorted(p.name for p in result["files"] if p.name.startswith("acc_matrix_"))
    assert pngs == ["acc_matrix_ewc__digits__class.png", "acc_matrix_finetune__digits__class.png"]
    for name in pngs:
        assert (sweep / "aggregate" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_swept_key_and_setting_split_groups(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for i, (lr, seed, acc) in enumerate([("0.1", 0, 0.4), ("0.1", 1, 0.6), ("0.01", 0, 0.9), ("0.01", 1, 0.7)]):
        make_run(root, str(i), "finetune", seed, acc, lr=lr)
    make_run(root, "4", "finetune", 0, 0.3, lr="0.1", data="cifar10")
    result = aggregate(root, out_dir=tmp_path / "out")
    assert result["keys"] == ["data.name", "scenario.name", "method.lr"]
    got = {(r["data.name"], r["method.lr"]): (r["n_runs"], r["avg_acc_mean"]) for r in result["rows"]}
    assert got == {("cifar10", "0.1"): (1, pytest.approx(0.3)), ("digits", "0.01"): (2, pytest.approx(0.8)),
                   ("digits", "0.1"): (2, pytest.approx(0.5))}  # fmt: skip
    single = next(r for r in result["rows"] if r["data.name"] == "cifar10")
    assert single["avg_acc_std"] is None  # one run: no std, shown as a bare mean
    assert "| finetune | cifar10 | class | 0.1 | 1 | 0.3000 |" in (tmp_path / "out" / "summary.md").read_text()


def test_cli_exit_codes(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep)]) == 0
    assert "| finetune | digits | class | 3 |" in capsys.readouterr().out
    assert main([str(sweep), "--strict"]) == 3
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "no run folder" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 1
    assert "SWEEP_DIR=" in capsys.readouterr().err
