"""Reservoir buffer: inclusion frequencies, determinism, checkpoint state, and DDP (two gloo processes on CPU)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch

from cl.modules.buffer import ReservoirBuffer, reservoir_slots


def _fill(capacity: int, n: int, batch: int, seed: int) -> ReservoirBuffer:
    buf = ReservoirBuffer(capacity, (1,), seed=seed)
    for start in range(0, n, batch):
        ids = torch.arange(start, min(start + batch, n))
        buf.add(ids.float()[:, None], ids, experience=start // 50)
    return buf


def test_inclusion_frequency_is_capacity_over_n():
    capacity, n, seeds = 12, 60, 400
    counts = torch.zeros(n)
    for seed in range(seeds):
        buf = _fill(capacity, n, batch=12, seed=seed)
        kept = buf.y[: len(buf)]
        assert len(set(kept.tolist())) == capacity  # no duplicates, always full
        counts[kept] += 1
    freq = counts / seeds
    p = capacity / n
    bound = 5 * math.sqrt(p * (1 - p) / seeds)  # 5 sigma per item
    assert (freq - p).abs().max() < bound, (freq.min(), freq.max())
    # early and late items alike (a FIFO or "keep first" buffer would fail this)
    assert abs(freq[:15].mean() - p) < 0.04 and abs(freq[-15:].mean() - p) < 0.04


@pytest.mark.parametrize("capacity", [1, 3])
def test_each_arrival_is_kept_with_probability_capacity_over_position_plus_one(capacity):
    """Algorithm R: item n (0-based, n >= capacity) replaces a uniform slot with probability capacity / (n + 1). An
    off-by-one in the draw (j ~ U{0..n-1} or U{0..n+1}) moves these probabilities by 0.15-0.5, i.e. > 20 sigma."""
    seeds, positions = 4000, torch.arange(capacity, capacity + 6)
    kept = torch.zeros(len(positions))
    slot_counts = torch.zeros(capacity)
    for seed in range(seeds):
        slots = reservoir_slots(capacity, len(positions), capacity, seed)  # items capacity.. in one batch
        kept += (slots >= 0).float()
        slot_counts += torch.bincount(slots[slots >= 0], minlength=capacity).float()
    p = capacity / (positions + 1).double()
    sigma = (p * (1 - p) / seeds).sqrt()
    assert ((kept / seeds - p).abs() <= 5 * sigma).all(), (kept / seeds, p)
    share = slot_counts / slot_counts.sum()  # a replaced slot is uniform over the buffer
    assert (share - 1 / capacity).abs().max() <= 5 * math.sqrt((1 / capacity) * (1 - 1 / capacity) / slot_counts.sum())


@pytest.mark.parametrize("batch", [2, 5])
def test_every_subset_is_equally_likely(batch):
    """Capacity 2 over 5 items: each of the C(5, 2) = 10 kept pairs has probability 1/10 (Vitter's Algorithm R), fed
    in batches of 2 or as one batch. With U{0..n+1} the pair {0, 1} would have probability 0.2, with U{0..n-1}
    probability 0; the tolerance is 5 sigma = 0.034."""
    seeds = 2000
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(seeds):
        buf = _fill(2, 5, batch=batch, seed=seed)
        key = tuple(sorted(buf.y.tolist()))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 10
    bound = 5 * math.sqrt(0.1 * 0.9 / seeds)
    assert all(abs(c / seeds - 0.1) < bound for c in counts.values()), counts


def test_a_request_larger_than_the_buffer_shrinks_to_its_items():
    """As Mammoth's Buffer.get_data: min(n, stored) distinct items, never a repeated one."""
    buf = ReservoirBuffer(10, (1,), seed=0)
    ids = torch.arange(3)
    buf.add(ids.float()[:, None], ids, 0)
    s = buf.sample(8, generator=torch.Generator().manual_seed(0))
    assert sorted(s.y.tolist()) == [0, 1, 2] and sorted(s.index.tolist()) == [0, 1, 2]
    assert len(buf.sample(2).y.unique()) == 2


def test_fills_before_replacing_and_stores_fields():
    buf = ReservoirBuffer(8, (2,), num_logits=3, seed=1)
    x = torch.arange(12.0).reshape(6, 2)
    slots = buf.add(x, torch.arange(6), 4, logits=torch.ones(6, 3) * 7)
    assert slots.tolist() == list(range(6)) and len(buf) == 6
    assert torch.equal(buf.x[:6], x) and buf.experience[:6].tolist() == [4] * 6
    assert torch.all(buf.logits[:6] == 7) and buf.y[6:].tolist() == [-1, -1]
    s = buf.sample(4)
    assert s.x.shape == (4, 2) and s.logits.shape == (4, 3) and len(set(s.index.tolist())) == 4
    with pytest.raises(ValueError, match="logits"):
        buf.add(x, torch.arange(6), 0)


def test_deterministic_and_strict_state_dict_roundtrip():
    a, b = _fill(16, 300, 7, seed=3), _fill(16, 300, 7, seed=3)
    assert torch.equal(a.y, b.y)
    c = _fill(16, 300, 7, seed=4)
    assert not torch.equal(a.y, c.y)
    fresh = ReservoirBuffer(16, (1,), seed=3)
    fresh.load_state_dict(a.state_dict(), strict=True)
    assert int(fresh.num_seen) == 300 and torch.equal(fresh.x, a.x)
    # resuming continues exactly as an uninterrupted buffer
    ids = torch.arange(300, 310)
    fresh.add(ids.float()[:, None], ids, 6)
    a.add(ids.float()[:, None], ids, 6)
    assert torch.equal(fresh.y, a.y)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="buffer_size=0"):
        ReservoirBuffer(0, (1, 4, 4))
    with pytest.raises(ValueError, match="input_shape"):
        ReservoirBuffer(4, (1, 0))
    buf = ReservoirBuffer(4, (1, 4, 4))
    with pytest.raises(ValueError, match="input shape"):
        buf.add(torch.zeros(2, 1, 5, 5), torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(2)


def test_later_item_wins_a_shared_slot():
    # find a batch where two items draw the same slot; the sequential reference keeps the later one
    for seed in range(200):
        slots = reservoir_slots(10, 20, 4, seed)
        kept = slots[slots >= 0]
        if len(kept) != len(set(kept.tolist())):
            break
    else:
        pytest.skip("no collision found")
    buf = ReservoirBuffer(4, (1,), seed=seed)
    ids = torch.arange(10)
    buf.add(ids.float()[:, None], ids, 0)
    ids = torch.arange(10, 30)
    buf.add(ids.float()[:, None], ids, 1)
    expected = {}
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            expected[s] = 10 + i
    for s, item in expected.items():
        assert int(buf.y[s]) == item


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    buf = ReservoirBuffer(12, (1,), num_logits=2, seed=5)
    for step in range(10):  # 10 global batches of 8 items, sharded as the engine's sampler: rank r holds the
        ids = torch.arange(step * 8 + rank, step * 8 + 8, 2)  # positions r, r + 2, ... (rank 1 gets 3 in the last)
        if step == 9 and rank == 1:
            ids = ids[:3]
        buf.add(ids.float()[:, None], ids, step // 5, logits=ids.float()[:, None].expand(-1, 2))
    torch.save(buf.state_dict(), f"{out}/rank{rank}.pt")
    share = buf.sample(6, generator=torch.Generator().manual_seed(3), shard=True)
    torch.save(share.y, f"{out}/replay{rank}.pt")
    dist.destroy_process_group()


def test_ddp_ranks_hold_the_single_process_buffer(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    single = ReservoirBuffer(12, (1,), num_logits=2, seed=5)
    for step in range(10):  # the same global batches in sampler order (interleaved ranks) in one process
        ids = torch.arange(step * 8, step * 8 + (7 if step == 9 else 8))
        single.add(ids.float()[:, None], ids, step // 5, logits=ids.float()[:, None].expand(-1, 2))
    assert int(single.num_seen) == 79 and len({int(v) for v in single.y}) == 12
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in single.state_dict().items():
            assert torch.equal(state[key], value), (rank, key)
    # the ranks' replay shares are the 1-process draw, rank r taking its items r, r + 2, ...
    draw = single.sample(6, generator=torch.Generator().manual_seed(3)).y
    shares = [torch.load(tmp_path / f"replay{rank}.pt", weights_only=True) for rank in range(2)]
    assert [len(s) for s in shares] == [3, 3]
    assert torch.equal(torch.stack(shares, dim=1).reshape(-1), draw)
