"""The same command gives the same result from any folder (issue 18, 'package files'): conf/ and the committed
letters-pretrained weights (assets/) are found from the package, from the source checkout as from a non-editable
``pip install .``; only the outputs go under the working directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import REPO, cli_env, run_module

# the offline default (experiment=coda_digits), shrunk: 2 experiences of 1 batch
DEFAULT_SHRUNK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=1",
    "trainer.enable_progress_bar=false",
    "scenario.n_experiences=2",
    "logger=none",
]


def _run(cwd: Path, run_dir: Path, env: dict[str, str] | None = None) -> dict:
    res = run_module("cl.run", [f"hydra.run.dir={run_dir}", *DEFAULT_SHRUNK], cwd=cwd, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def from_repo_root(tmp_path_factory) -> dict:
    return _run(REPO, tmp_path_factory.mktemp("root") / "run")


@pytest.mark.timeout(900)
def test_default_run_from_another_folder_equals_the_run_from_the_repository(from_repo_root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    metrics = _run(elsewhere, tmp_path / "run")
    np.testing.assert_array_equal(np.array(metrics["acc_matrix"]), np.array(from_repo_root["acc_matrix"]))
    weights = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["backbone"]["weights"]
    assert weights == str(REPO / "assets" / "vit_tiny_letters_16px_1ch.pt")
    assert not (elsewhere / "assets").exists()  # nothing pretrained anew in the working directory


@pytest.mark.slow  # builds and installs the package (about a minute), then one run
@pytest.mark.timeout(1200)
def test_non_editable_install_runs_the_default_from_any_folder(from_repo_root, tmp_path):
    src, site = tmp_path / "src", tmp_path / "site"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:  # the committed tree only (no build/ or egg-info left in the checkout)
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*pip, str(site), str(src)], check=True, capture_output=True, timeout=600)
    assert (site / "cl" / "_package" / "conf" / "cl.yaml").is_file()
    assert (site / "cl" / "_package" / "assets" / "vit_tiny_letters_16px_1ch.pt").is_file()
    shutil.rmtree(src)  # the installed package alone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = cli_env()
    env["PYTHONPATH"] = str(site)
    metrics = _run(elsewhere, tmp_path / "run", env=env)
    np.testing.assert_array_equal(np.array(metrics["acc_matrix"]), np.array(from_repo_root["acc_matrix"]))
    weights = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["backbone"]["weights"]
    assert weights.startswith(str(site / "cl" / "_package" / "assets"))
