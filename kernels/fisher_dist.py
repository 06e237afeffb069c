"""DDP reduction for Fisher diagonals: every rank accumulates sums over its own shard of the data, then all sums and the
sample / batch counts are packed into one buffer and all-reduced once, so that F = (sum over ranks of sums) /
(sum over ranks of counts) equals the single-process result on the union of the shards."""

from __future__ import annotations

import torch
from torch import Tensor


def is_distributed(flag: bool | None) -> bool:
    """``flag`` None: reduce iff torch.distributed is initialised with more than one rank."""
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if flag and not active:
        raise ValueError("fisher_diagonal: distributed=True but torch.distributed is not initialised (world_size>1)")
    return active if flag is None else bool(flag)


def all_reduce_sums(sums: dict[str, Tensor], counts: list[int]) -> tuple[dict[str, Tensor], list[int]]:
    """One all_reduce(SUM) of every tensor in ``sums`` and of ``counts``; returns the reduced copies."""
    import torch.distributed as dist

    names = list(sums)
    if not names:
        raise ValueError("fisher_diagonal: nothing to reduce")
    dtype = torch.float64  # exact counts and a well-conditioned sum across ranks
    device = sums[names[0]].device
    flat = torch.cat(
        [sums[n].reshape(-1).to(dtype) for n in names] + [torch.tensor(counts, dtype=dtype, device=device)]
    )
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out: dict[str, Tensor] = {}
    offset = 0
    for n in names:
        k = sums[n].numel()
        out[n] = flat[offset : offset + k].reshape(sums[n].shape).to(sums[n].dtype)
        offset += k
    return out, [int(round(v)) for v in flat[offset:].tolist()]
