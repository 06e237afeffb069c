"""unlearn.run never replaces earlier outputs and honours moved folders (issue 18, items 3, 5 and the read-only case):
an output directory an earlier unlearning or training run wrote into is refused; ``paths.data_dir=NEW`` reaches the
saved config's data source; a read-only source run directory sends the output and the importance cache elsewhere."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import REPO, cli_env, run_module
from tests.unlearn.test_pipeline import trained, unlearn  # noqa: F401  (the module's shared checkpoint)


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def test_an_earlier_unlearning_output_is_never_replaced(trained, tmp_path):  # noqa: F811
    from unlearn.context import UnlearnConfigError

    out = tmp_path / "out"
    unlearn(trained, out, "unlearn_method=ssd", "forget.classes=[1]")
    before = _files(out)
    assert (out / "unlearn_report.json") in before and (out / ".hydra" / "config.yaml") in before
    with pytest.raises(UnlearnConfigError, match=r"already holds a run \(unlearn_report.json, splits, checkpoints"):
        unlearn(trained, out, "unlearn_method=ssd", "forget.classes=[2]")
    assert _files(out) == before


def test_the_training_run_directory_is_refused_as_output(trained):  # noqa: F811
    from unlearn.context import UnlearnConfigError

    before = _files(trained / "checkpoints")
    markers = r"already holds a run \(checkpoints, .hydra, metrics.json, config.yaml\)"
    with pytest.raises(UnlearnConfigError, match=markers):
        unlearn(trained, trained, "unlearn_method=ssd", "forget.classes=[1]")
    assert _files(trained / "checkpoints") == before


def test_a_moved_data_dir_reaches_the_saved_data_source():
    from unlearn.context import train_config

    saved = {"paths": {"data_dir": "/old/data", "root_dir": "/old"}, "data": {"source": {"data_dir": "/old/data"}}}
    composed = OmegaConf.create({"paths": {"data_dir": "/new/data", "root_dir": "/old"}})
    cfg = train_config(saved, composed, ["paths.data_dir=/new/data", "unlearn_method=ssd"])
    assert cfg.data.source.data_dir == "/new/data" and cfg.paths.data_dir == "/new/data"


@pytest.mark.timeout(900)
def test_a_read_only_source_run_sends_output_and_cache_elsewhere(trained, tmp_path):  # noqa: F811
    """The source run is made immutable (``chattr +i``: read-only for root too, as a shared or archived run)."""
    import subprocess

    source, logs = tmp_path / "run", tmp_path / "logs"
    shutil.copytree(trained, source, ignore=shutil.ignore_patterns("unlearn*", ".lock"))
    if subprocess.run(["chattr", "-R", "+i", str(source)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        before = _files(source)
        args = [f"checkpoint={source}", "unlearn_method=ssd", "forget.classes=[1]", "eval.probe=false"]
        res = run_module("unlearn.run", [*args, f"paths.log_dir={logs}"], cwd=REPO, env=cli_env(), timeout=800)
        assert res.returncode == 0, res.stderr[-3000:]
        outs = list((logs / "unlearn" / "run").iterdir())
        assert len(outs) == 1 and (outs[0] / "unlearn_report.json").is_file()
        assert list(
            (outs[0] / "unlearn_cache").glob("importance-*.safetensors")
        )  # the importance cache fell back to the output dir
        assert _files(source) == before and not (source / "unlearn").exists()
    finally:
        subprocess.run(["chattr", "-R", "-i", str(source)], capture_output=True)


def test_forget_fraction_must_be_a_number():
    from unlearn.forget import ForgetError, RandomForget

    with pytest.raises(ForgetError, match=r"forget.fraction='abc'; allowed: a number in \(0, 1\)"):
        RandomForget(fraction="abc")


@pytest.mark.parametrize(
    "text", ["experience,index,label\n0,1,3\n0,2,x\n", "experience,index\n0,1\n0\n", "3\n4\n5 6\n", "1\n2\n2.5\n"]
)
def test_a_malformed_indices_line_is_refused_with_its_number(tmp_path, text):
    from unlearn.forget import ForgetError, read_keys

    path = tmp_path / "forget_train.csv"
    path.write_text(text)
    with pytest.raises(ForgetError, match=r"line 3: .* is not"):
        read_keys(path)
