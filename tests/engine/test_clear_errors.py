"""Bad input gets a clear error naming the key and what is allowed, before any file is written (issue 18, 'clear
errors'); Ctrl-C stops like SIGTERM; a full disk and a damaged dataset file are named."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from cl.experiment import ConfigurationError
from cl.utils.atomic import write_with
from tests.helpers import TINY, cli_overrides, run_cl, run_module


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=abc", r"trainer.max_epochs='abc'; allowed: a positive integer"),
        ("seed=abc", r"seed='abc'; allowed: an integer"),
        ("trainer.max_epochs=0", r"trainer.max_epochs=0; allowed: a positive integer"),
        ("trainer.max_epochs=-1", r"trainer.max_epochs=-1; allowed: a positive integer"),
        ("method.optimizer.lr=-1", r"method.optimizer.lr=-1; allowed: a positive number"),
        ("data.batch_size=0", r"data.batch_size=0; allowed: a positive integer"),
    ],
)
def test_bad_values_name_the_key_before_any_file(make_cfg, tmp_path, override, message):
    with pytest.raises(ConfigurationError, match=message):
        run_cl(make_cfg(override))
    written = sorted(p.name for p in (tmp_path / "run").iterdir()) if (tmp_path / "run").exists() else []
    assert written in ([], [".lock"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_trainer_without_a_gpu_is_refused(make_cfg, tmp_path):
    with pytest.raises(ConfigurationError, match=r"trainer.accelerator='gpu' but this machine has no usable CUDA"):
        run_cl(make_cfg("trainer=gpu"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_full_disk_is_named(tmp_path, monkeypatch):
    target = tmp_path / "task_0.ckpt"

    def torch_save_to_full_disk(tmp: Path) -> None:  # torch's own error for a failed write: "unexpected pos"
        with open("/dev/full", "wb") as f:
            torch.save({"w": torch.zeros(4096)}, f)

    real_statvfs = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((*real_statvfs(p)[:4], 0, *real_statvfs(p)[5:])))
    with pytest.raises(OSError, match=rf"no space left on device while writing {target}") as err:
        write_with(target, torch_save_to_full_disk)
    assert err.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())  # no partial file left

    def enospc(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=rf"no space left on device while writing {target}"):
        write_with(target, enospc)


def test_a_damaged_cifar_file_is_named(tmp_path):
    from cl.data.sources.cifar import _read_pickle

    good = tmp_path / "data_batch_1"
    good.write_bytes(pickle.dumps({"data": [1, 2, 3]})[:-7])  # truncated
    with pytest.raises(ValueError, match=rf"{good}: damaged or not a CIFAR python pickle"):
        _read_pickle(str(good))


@pytest.mark.timeout(600)
def test_ctrl_c_stops_like_sigterm_and_the_run_resumes(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "sent"
    hook = ["+callbacks.sigint._target_=tests.engine.run_hooks.SignalAt", "+callbacks.sigint.experience=1",
            "+callbacks.sigint.step=1", f"+callbacks.sigint.marker={marker}"]  # fmt: skip
    args = [f"hydra.run.dir={run_dir}", *cli_overrides([*TINY, *hook])]
    first = run_module("cl.run", args)
    assert first.returncode == 130, first.stderr[-3000:]
    assert "interrupted (Ctrl-C): SIGTERM received while training experience 1" in first.stderr
    assert "KeyboardInterrupt" not in first.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["initial.ckpt", "task_0.ckpt"]
    second = run_module("cl.run", args)  # the same command resumes
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["complete"] is True
