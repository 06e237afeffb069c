"""cl/engine/distributed.py without processes: the sharded data order equals the 1-process order batch by batch,
the global batch split, refusals of unsupported DDP setups, the rank-0 rule, SLURM requeue, the trainer configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cl.engine.distributed import (
    ShardedEpochSampler,
    check_distributed_config,
    is_global_zero,
    per_rank_batch_size,
    requeue_slurm_job,
)


def _batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


@pytest.mark.parametrize(("n", "global_batch", "world"), [(64, 16, 2), (37, 8, 2), (50, 12, 4), (29, 6, 3)])
def test_ranks_together_see_the_one_process_batches(n: int, global_batch: int, world: int) -> None:
    single = ShardedEpochSampler(n, seed=7, world_size=1)
    multi = ShardedEpochSampler(n, seed=7, world_size=world)
    for epoch in (0, 1):
        single.set_epoch(epoch)
        multi.set_epoch(epoch)
        one = _batches(single.indices(0), global_batch)
        per_rank = [_batches(multi.indices(r), global_batch // world) for r in range(world)]
        assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
        assert all(len(b) == len(one) for b in per_rank)
        for step, batch in enumerate(one):
            union = sorted(i for r in range(world) for i in per_rank[r][step])
            if step < len(one) - 1 or n % world == 0:
                assert union == sorted(batch)  # same samples in the same step
                rows = len(per_rank[0][step])  # and row i of rank r is row i * world + r of the 1-process batch
                assert [per_rank[r][step][i] for i in range(rows) for r in range(world)] == batch
            else:  # last step: the permutation's first (-n) % world samples are repeated, nothing else differs
                extra = sorted(union)
                for i in batch:
                    extra.remove(i)
                assert len(extra) == -n % world
                assert set(extra) <= set(single.indices(0)[: -n % world])


@pytest.mark.parametrize(("n", "global_batch", "world"), [(37, 8, 2), (50, 12, 4), (29, 6, 3), (48, 16, 2)])
def test_drop_last_drops_the_same_last_partial_batch_for_any_world_size(n: int, global_batch: int, world: int) -> None:
    """``data.drop_last=true``: only full global batches, the first floor(n / B) of the 1-process order, split over
    the ranks as without it; nothing padded."""
    keep = ShardedEpochSampler(n, seed=7, world_size=1)
    single = ShardedEpochSampler(n, seed=7, world_size=1, drop_last_batch=global_batch)
    multi = ShardedEpochSampler(n, seed=7, world_size=world, drop_last_batch=global_batch)
    full = n // global_batch * global_batch
    for epoch in (0, 1):
        for s in (keep, single, multi):
            s.set_epoch(epoch)
        assert single.indices(0) == keep.indices(0)[:full] and len(single) == full
        assert len(multi) == full // world and all(len(multi.indices(r)) == full // world for r in range(world))
        one = _batches(single.indices(0), global_batch)
        per_rank = [_batches(multi.indices(r), global_batch // world) for r in range(world)]
        for step, batch in enumerate(one):
            assert [per_rank[r][step][i] for i in range(global_batch // world) for r in range(world)] == batch
    with pytest.raises(ValueError, match="data.drop_last=true with data.batch_size=64"):
        ShardedEpochSampler(40, seed=0, world_size=1, drop_last_batch=64)


def test_each_epoch_and_seed_draws_its_own_order() -> None:
    s = ShardedEpochSampler(100, seed=3, world_size=1)
    first = s.indices(0)
    assert sorted(first) == list(range(100))
    s.set_epoch(1)
    assert s.indices(0) != first
    s.set_epoch(0)
    assert s.indices(0) == first
    assert ShardedEpochSampler(100, seed=4, world_size=1).indices(0) != first
    assert len(ShardedEpochSampler(37, seed=0, world_size=2)) == 19


def test_global_batch_is_split_or_refused() -> None:
    assert per_rank_batch_size(32, 2) == 16
    assert per_rank_batch_size(128, 4) == 32
    with pytest.raises(ValueError, match=r"data.batch_size=30 .* multiple of the number of processes \(4"):
        per_rank_batch_size(30, 4)


def _cfg(strategy, devices=2, batch_size=32):
    return OmegaConf.create({"trainer": {"strategy": strategy, "devices": devices}, "data": {"batch_size": batch_size}})


def test_unsupported_setups_are_refused_before_training(monkeypatch) -> None:
    for k in ("SLURM_NTASKS_PER_NODE", "SLURM_NTASKS", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match=r"trainer.strategy='ddp_spawn'.*allowed: 'ddp'"):
        check_distributed_config(_cfg("ddp_spawn"), multirun=False)
    with pytest.raises(ValueError, match=r"data.batch_size=33"):
        check_distributed_config(_cfg("ddp", batch_size=33), multirun=False)
    with pytest.raises(ValueError, match=r"multirun.*hydra.launcher.tasks_per_node"):
        check_distributed_config(_cfg("ddp"), multirun=True)
    check_distributed_config(_cfg("ddp"), multirun=False)
    check_distributed_config(_cfg("auto", devices=1, batch_size=33), multirun=True)  # one process: nothing to check
    target = {"_target_": "lightning.pytorch.strategies.DDPStrategy", "process_group_backend": "gloo"}
    check_distributed_config(_cfg(target, devices="0,1"), multirun=False)
    with pytest.raises(ValueError, match=r"data.batch_size=31"):
        check_distributed_config(_cfg(target, devices="0,1", batch_size=31), multirun=False)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")  # SLURM started one task per device: allowed under -m
    check_distributed_config(_cfg("ddp"), multirun=True)


def test_only_rank_zero_writes_even_before_the_process_group_exists(monkeypatch) -> None:
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    assert is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning gives the re-executed rank-1 command
    assert not is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert not is_global_zero()


def test_requeue_calls_scontrol_with_the_job_or_array_task(monkeypatch, tmp_path: Path, capsys) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$2" != "999" ]\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "LOCAL_RANK", "RANK", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    assert requeue_slurm_job() is False and not calls.exists()
    assert "not inside a SLURM job" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert requeue_slurm_job() is True
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert requeue_slurm_job() is True
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    monkeypatch.setenv("SLURM_JOB_ID", "999")  # scontrol fails: reported, not raised
    assert requeue_slurm_job() is False
    assert "scontrol requeue 999 failed" in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert requeue_slurm_job() is False  # only rank 0 asks
    assert calls.read_text().splitlines() == ["requeue 77", "requeue 70_2", "requeue 999"]


@pytest.mark.parametrize(("name", "world"), [("ddp_cpu", 2), ("lightning", 1), ("cpu", 1)])
def test_trainer_configs_build_the_intended_trainer(make_cfg, tmp_path: Path, name: str, world: int) -> None:
    import lightning as L

    from cl.engine.distributed import world_size_of
    from cl.engine.trainer import make_trainer

    cfg = make_cfg(f"trainer={name}", "logger=none")
    trainer = make_trainer(cfg.trainer, None, tmp_path, 0, 5)
    assert world_size_of(trainer) == world
    assert type(trainer) is L.Trainer  # one trainer on every device
    assert trainer._accelerator_connector.use_distributed_sampler is False  # the engine shards (identical order)
    assert trainer.max_epochs == 1  # the shrunk test config applies to ddp configs too
    gpu = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "trainer" / "ddp.yaml")
    assert gpu.strategy._target_ == "cl.engine.ddp_strategy.DDPStrategy" and gpu.accelerator == "gpu"
    if world == 2:  # the engine's DDP strategy: every rank stops at the same step on SIGTERM
        from cl.engine.ddp_strategy import DDPStrategy

        assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy.process_group_backend == "gloo"
