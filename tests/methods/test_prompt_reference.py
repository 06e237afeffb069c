"""Reference runs beside the main run (cl/modules/prompt_reference.py): several ``ReferenceRun`` callbacks share the
``reference`` key of metrics.json and one printed table (issue 20: the default run shows SimpleCIL and the linear
probe beside finetune)."""

from __future__ import annotations

import json

from omegaconf import open_dict

from tests.helpers import TINY, run_cl

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001}


def _reference(method: str, subdir: str, **extra: object) -> dict:
    return {
        "_target_": "cl.modules.prompt_reference.ReferenceRun",
        "_recursive_": False,
        "subdir": subdir,
        "method": {"_target_": f"cl.methods.{method}", "name": subdir.removeprefix("ref_"), **extra},
        "enabled": True,
    }


def _cfg(make_cfg, enabled: bool = True):
    cfg = make_cfg(*TINY, "callbacks.flops=null")
    with open_dict(cfg):
        cfg.callbacks = {
            "first": _reference("simplecil.SimpleCIL", "ref_simplecil", optimizer=None, scheduler=None),
            "second": _reference("finetune.Finetune", "ref_finetune", optimizer=ADAM, scheduler=None),
        }
        cfg.callbacks.second.enabled = enabled
    return cfg


def test_several_references_report_together_and_print_one_table(make_cfg, tmp_path, capsys) -> None:
    cfg = _cfg(make_cfg)
    run_cl(cfg)
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sorted(saved["reference"]) == ["finetune", "simplecil"]
    for name in ("simplecil", "finetune"):
        ref = json.loads((tmp_path / "run" / f"ref_{name}" / "metrics.json").read_text())
        assert ref["method"] == name and ref["complete"]
        assert saved["reference"][name]["avg_acc"] == ref["avg_acc"]
    # one table with the main method and both references, printed once (by the last reference), both dirs named
    assert out.count("vs references on the same stream") == 1
    table = out[out.index("vs references on the same stream") :]
    assert all(name in table for name in ("finetune", "simplecil"))
    assert "ref_simplecil" in table and "ref_finetune" in table


def test_a_disabled_reference_is_neither_run_nor_reported(make_cfg, tmp_path, capsys) -> None:
    cfg = _cfg(make_cfg, enabled=False)
    run_cl(cfg)
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sorted(saved["reference"]) == ["simplecil"]
    assert not (tmp_path / "run" / "ref_finetune").exists()
    assert out.count("vs reference on the same stream") == 1  # the only enabled reference prints the table
