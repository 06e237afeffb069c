"""FPF's replay draw under DDP (issue 18, item 10): with the global RNG seeded alike on every rank, each rank must
train on other items (else the gradient all-reduce averages W copies of one batch). Two gloo processes draw; their
shares interleaved are the 1-process draw when W divides the batch, and differ between ranks when it does not."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cl.modules.buffer import ReservoirBuffer
from cl.modules.fpf import replay_sample


def _filled_buffer() -> ReservoirBuffer:
    buf = ReservoirBuffer(capacity=40, input_shape=[1], seed=3)
    buf.add(torch.arange(100.0).reshape(100, 1), torch.arange(100) % 7, 0)  # before any process group: no gather
    return buf


def _draw(rank: int, world: int, init_file: str, out: str) -> None:
    buf = _filled_buffer()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the engine seeds every rank alike
        even = replay_sample(buf, 8).index.tolist()
        odd = replay_sample(buf, 5).index.tolist()
        Path(f"{out}.{rank}").write_text(json.dumps({"even": even, "odd": odd}))
    finally:
        dist.destroy_process_group()


def test_each_rank_replays_its_own_items(tmp_path):
    world = 2
    mp.spawn(_draw, args=(world, str(tmp_path / "init"), str(tmp_path / "draw")), nprocs=world, join=True)
    ranks = [json.loads((tmp_path / f"draw.{r}").read_text()) for r in range(world)]
    torch.manual_seed(0)
    one = replay_sample(_filled_buffer(), 8).index.tolist()  # one process, the same seed
    assert [ranks[r]["even"][i] for i in range(4) for r in range(world)] == one  # shares of the 1-process draw
    assert not set(ranks[0]["even"]) & set(ranks[1]["even"])
    assert len(ranks[0]["odd"]) == len(ranks[1]["odd"]) == 5 and ranks[0]["odd"] != ranks[1]["odd"]
