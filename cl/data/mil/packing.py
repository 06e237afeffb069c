"""Fixed-size ("packed") bags, for the methods whose replay buffers store inputs of one fixed shape (ER, DER++).

A bag of N instances with D features is normally the tensor ``(N, D)``. Packed to ``n`` rows it is ``(n, D + 1)``: the
first ``min(N, n)`` rows hold instances (a seeded subsample when ``N > n``), the rest zero, and the extra last column
is 1 for a real instance and 0 for padding. The MIL backbone (:mod:`cl.backbones.gdat`) recognises the extra column
(its ``in_dim + 1`` features) and drops the padding before it runs, so a packed bag gives exactly the outputs of the
bag itself.
"""

from __future__ import annotations

import torch


def pack_bag(
    features: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed (n, D + 1), kept)``: ``kept`` is the index of the instances kept, in packed order."""
    if n < 1:
        raise ValueError(f"data.pad_to={n}; must be a positive number of instances")
    N, D = features.shape
    kept = torch.arange(N) if N <= n else torch.randperm(N, generator=generator)[:n].sort().values
    out = features.new_zeros(n, D + 1)
    out[: len(kept), :D] = features[kept]
    out[: len(kept), D] = 1.0
    return out, kept


def unpack_bags(x: torch.Tensor, in_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(features (B, N, in_dim), valid (B, N) bool or None)`` of a batch of plain or packed bags."""
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"a MIL batch is (bags, instances, features); got shape {tuple(x.shape)}")
    if x.shape[-1] == in_dim:
        return x, None
    if x.shape[-1] == in_dim + 1:
        return x[..., :in_dim], x[..., in_dim] > 0.5
    raise ValueError(
        f"bags have {x.shape[-1]} features per instance but backbone.in_dim={in_dim} (packed bags: in_dim + 1)"
    )
