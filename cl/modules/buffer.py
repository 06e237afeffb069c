"""Reservoir replay buffer (Vitter, ACM TOMS 1985, "Algorithm R"), as used by ER / DER++ (Buzzega et al., NeurIPS 2020)
and FPF / k-FPF (Zhao et al., ICML 2023).

The n-th item of the stream (0-based) goes to slot n while the buffer is not full; afterwards it draws
j ~ U{0, ..., n} and replaces slot j if j < capacity, else it is dropped. After N >= capacity items every item is kept
with probability capacity / N.

Design choices:

* **Fixed-size state.** Inputs, labels, experience ids and (optionally, for DER++ / k-FPF-KD) logits are buffers of
  shape ``(capacity, ...)`` registered at construction, plus ``num_seen``; the buffer is therefore part of the owning
  method's ``state_dict`` and a fresh method loads a checkpoint strictly.
* **Counter-based randomness.** The draws for a batch come from a generator seeded by ``(seed, num_seen)``, not from
  a stateful generator: the buffer is a pure function of ``(seed, the item sequence, how it is batched)``, so a resumed
  run (which restores ``num_seen``) and every DDP rank make exactly the same decisions.
* **DDP: replicated, not sharded.** Under ``torch.distributed`` ``add`` all-gathers the ranks' batches *interleaved*
  (row i of rank r becomes row ``i * world + r``), which is the 1-process order of the engine's sharded sampler
  (``cl.engine.distributed.ShardedEpochSampler`` gives rank r the positions r, r + W, ... of the global batch), and
  every rank applies the same decisions to the gathered batch: every rank holds exactly the buffer a single process
  holds after the same global batches (tested with two gloo processes on CPU). We chose replication over sharding
  because the engine writes checkpoints from rank 0 only: a sharded buffer would lose the other ranks' shares. The
  cost is one all-gather of each training batch and ``world_size`` copies of the buffer. Bounded difference: when an
  experience's sample count is not a multiple of W, the sampler pads the last global batch with at most W - 1
  duplicates, which the buffer then also offers (``num_seen`` grows by the padding).
* **Replay draws under DDP.** ``sample(n, shard=True)`` draws the ``n`` indices of a 1-process run (from the global
  RNG, which the engine seeds identically on every rank) and returns this rank's share ``index[rank::world]``; the
  ranks' replay batches together are the 1-process replay batch, so with per-sample mean losses and DDP's gradient
  average the update is the 1-process one (``n`` must be a multiple of the world size).
* Within one batch, if two items draw the same slot, the later one wins (as sequential processing would).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: decorrelates (seed, counter) pairs
_MASK63 = (1 << 63) - 1


class ReplaySample(NamedTuple):
    """A batch drawn from the buffer (``logits`` is ``None`` when the buffer stores none)."""

    x: torch.Tensor
    y: torch.Tensor
    experience: torch.Tensor
    logits: torch.Tensor | None
    index: torch.Tensor


def reservoir_slots(num_seen: int, n: int, capacity: int, seed: int) -> torch.Tensor:
    """Slots for ``n`` incoming items when ``num_seen`` items came before (``-1``: dropped). Deterministic in its
    arguments; later items of the batch may reuse an earlier item's slot (the later one wins)."""
    if capacity < 1:
        raise ValueError(f"buffer capacity={capacity}; must be a positive integer")
    position = torch.arange(num_seen, num_seen + n, dtype=torch.int64)
    gen = torch.Generator().manual_seed(((int(seed) * _MIX) ^ (int(num_seen) * 0xBF58476D1CE4E5B9)) & _MASK63)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    j = torch.floor(u * (position + 1).to(torch.float64)).to(torch.int64)  # uniform on {0, ..., position}
    slots = torch.where(position < capacity, position, torch.where(j < capacity, j, torch.full_like(j, -1)))
    return slots


class ReservoirBuffer(nn.Module):
    """Reservoir buffer of ``capacity`` items of shape ``input_shape`` (see the module docstring)."""

    def __init__(
        self,
        capacity: int,
        input_shape: Sequence[int],
        num_logits: int = 0,
        seed: int = 0,
        input_dtype: torch.dtype = torch.float32,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if int(capacity) < 1:
            raise ValueError(f"method.buffer_size={capacity}; must be a positive integer")
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"method.input_shape={list(input_shape)}; must be positive sizes, e.g. [1, 16, 16]")
        self.capacity, self.input_shape, self.seed = int(capacity), shape, int(seed)
        self.gather_distributed = gather_distributed
        self.register_buffer("x", torch.zeros((self.capacity, *shape), dtype=input_dtype))
        self.register_buffer("y", torch.full((self.capacity,), -1, dtype=torch.long))
        self.register_buffer("experience", torch.full((self.capacity,), -1, dtype=torch.long))
        self.register_buffer("logits", torch.zeros((self.capacity, int(num_logits))))
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.long))

    @property
    def stores_logits(self) -> bool:
        return self.logits.shape[1] > 0

    def __len__(self) -> int:
        return min(int(self.num_seen), self.capacity)

    def is_empty(self) -> bool:
        return int(self.num_seen) == 0

    @torch.no_grad()
    def add(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        experience: int | torch.Tensor,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Offer a batch to the reservoir; returns the slot of each (gathered) item, ``-1`` for dropped ones."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"buffer input shape {self.input_shape} but the batch has items of {tuple(x.shape[1:])}")
        if self.stores_logits and logits is None:
            raise ValueError("this buffer stores logits (DER++ / k-FPF-KD): pass the batch's logits")
        exp = torch.as_tensor(experience, device=y.device).expand(len(y)).to(torch.long)
        parts = [x, y.to(torch.long), exp] + ([logits.detach()] if self.stores_logits else [])
        if self.gather_distributed and _world_size() > 1:
            parts = [_all_gather_rows(p) for p in parts]
        x, y, exp = parts[0], parts[1], parts[2]
        n = len(y)
        slots = reservoir_slots(int(self.num_seen), n, self.capacity, self.seed)
        kept = (slots >= 0).nonzero().flatten()
        if len(kept):
            # the last item to claim a slot wins, as in sequential processing
            last = torch.full((self.capacity,), -1, dtype=torch.long)
            last.scatter_reduce_(0, slots[kept], kept, reduce="amax")
            winners = kept[last[slots[kept]] == kept]
            target = slots[winners].to(self.x.device)
            src = winners.to(x.device)
            self.x[target] = x[src].to(self.x)
            self.y[target] = y[src].to(self.y.device)
            self.experience[target] = exp[src].to(self.y.device)
            if self.stores_logits:
                self.logits[target] = parts[3][src].to(self.logits)
        self.num_seen += n
        return slots

    def sample(self, n: int, generator: torch.Generator | None = None, shard: bool = False) -> ReplaySample:
        """``min(n, len(self))`` stored items, uniformly without replacement: a request larger than the buffer shrinks
        to the buffer's size, as Mammoth's ``Buffer.get_data`` (github.com/aimagelab/mammoth, ``utils/buffer.py``)
        does. With ``shard`` under torch.distributed: this rank's share ``[rank::world]`` of that draw (``n`` a
        multiple of the world size; a shrunk draw is cut to a multiple of it, so every rank gets the same number of
        items and the ranks together get the 1-process draw; empty while the buffer holds fewer items than ranks)."""
        size = len(self)
        if size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        world = _world_size() if shard else 1
        if world > 1 and n % world:
            raise ValueError(
                f"method.replay_batch_size={n} must be a multiple of the number of processes ({world}) under DDP"
            )
        take = min(n, size)
        take -= take % world
        index = torch.randperm(size, generator=generator)[:take]
        if world > 1:
            index = index[torch.distributed.get_rank() :: world]
        index = index.to(self.x.device)
        return ReplaySample(
            self.x[index],
            self.y[index],
            self.experience[index],
            self.logits[index] if self.stores_logits else None,
            index,
        )

    def extra_repr(self) -> str:
        return f"capacity={self.capacity}, input_shape={self.input_shape}, logits={self.logits.shape[1]}"


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 *interleaved*: row i of rank r lands before row i of rank r + 1 and
    after row i - 1 of the last rank, the order of the engine's sharded sampler (ranks may hold different numbers of
    rows: rank r's rows are then the positions r, r + W, ... of the gathered batch, as long as they last)."""
    dist = torch.distributed
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = torch.tensor([int(s) for s in sizes])
    rows = int(counts.max())
    padded = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous())
    stacked = torch.stack(out, dim=1).reshape(rows * world, *t.shape[1:])  # row i of rank r at i * world + r
    valid = (torch.arange(rows)[:, None] < counts[None, :]).reshape(-1).to(t.device)
    return stacked[valid]
