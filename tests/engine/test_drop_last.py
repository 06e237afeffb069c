"""``data.drop_last``: the engine's training loader drops each epoch's last, smaller batch (the prompt methods'
reference loaders, ``drop_last=True``), k-FPF's step plan counts the same batches, and a bad value is refused with
its config key."""

from __future__ import annotations

import pytest

from cl.engine.loop import StreamRunner
from cl.experiment import build


def test_drop_last_trains_full_batches_only_and_k_fpf_plans_them(make_cfg, tmp_path) -> None:
    cfg = make_cfg(
        "method=k_fpf", "method.k=2", "method.fpf_iterations=1", "data.drop_last=true", "data.batch_size=32",
        "+trainer.limit_train_batches=1.0",
    )  # fmt: skip
    stream, model = build(cfg)
    runner = StreamRunner(cfg, model, stream, tmp_path / "run")
    model.setup_stream(stream)
    train = stream.experiences[0].train
    assert len(train) % 32  # the experience has a partial last batch to drop
    loader = runner.train_loader(train, 0)
    assert loader.drop_last and len(loader) == len(train) // 32
    assert [len(y) for _, y, *_ in loader] == [32] * (len(train) // 32)
    runner.run_experience(0)  # k-FPF refuses to train when its plan and Lightning's batch count differ
    assert int(model.total_steps) == sum(len(e.train) // 32 for e in stream.experiences)


def test_drop_last_must_be_a_bool(make_cfg, tmp_path) -> None:
    cfg = make_cfg("data.drop_last=yes")
    stream, model = build(cfg)
    runner = StreamRunner(cfg, model, stream, tmp_path / "run")
    with pytest.raises(ValueError, match=r"data\.drop_last='yes'; allowed: true, false"):
        runner.train_loader(stream.experiences[0].train, 0)
