"""RegLoRA's key positions and their gathered L1 penalty (SEFE, Chen et al., ICML 2025, arXiv 2505.02486; reference
github jinpeng0528/SEFE @2f61efe: ``key_elements_identification.py``, ``llava/model/language_model/modeling_llama.py``).

Key positions of experience t, for every adapted matrix (:func:`top_positions`): the ``k = int(M * d_out * d_in)``
largest entries of ``|B_t A_t|`` (``M`` a fraction; the reference's 0.02; ``int`` truncates as theirs does), with
``B A`` computed in the adapter's dtype and ranked in float32 (the reference's ``(lora_B @ lora_A).to(float32)``; the
alpha/r scale is left out, it does not change the ranking). ``torch.topk``'s order among equal values is undefined
(bf16 products tie often), so the choice here is deterministic: every entry above the k-th largest value, then the tied
entries with the lowest flat indices; the k positions are listed by decreasing magnitude, ties by increasing index.

Cumulative set S_{<=t} (:meth:`KeyPositions.cumulative`): experience t's positions first, then t-1's, ... (the
reference's ``torch.cat((new, legacy))``), duplicates kept, so a position important to several experiences weighs more
in the mean; ``deduplicate=True`` gives every position weight one.

Penalty while training experience t+1, per adapted matrix: ``mean_{(i,j) in S_{<=t}} |(B A)_{ij}|`` (B A of the new
adapter, no alpha/r scale, as the reference). It is computed at the key positions only
(``kernels.key_penalty.gathered_abs_mean``): ``(B A)_{ij} = B[i, :] . A[:, j]`` for the unique positions, with the
gradient ``dB = G A^T``, ``dA = B^T G`` of the sparse ``G`` of ``weight * sign`` at those positions, either as sparse
CSR products (``backend="torch"``, any device) or in one fused C++ pass over the positions (``"cpp"``, CPU; ``"auto"``
picks it on CPU); the reference forms the full ``B @ A`` of every matrix at every step. Summing the duplicates'
weights at the unique positions gives the same value and gradient as the mean over the list with duplicates.

Storage (:class:`KeyPositions`): every matrix's positions as flat indices ``i * d_in + j`` in int32 (int64 only for a
matrix of more than 2**31 - 1 entries), a quarter of the reference's int64 ``(row, col)`` pairs; one buffer
``positions`` of shape ``(slots, sum_m k_m)`` (slot t = experience t; k_m is fixed by the matrix shape, so the shape is
fixed by the stream length and the model, and checkpoints load strictly) plus ``filled``, in the state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from kernels.key_penalty import gathered_abs_mean, resolve_backend, tile_columns, tile_layout

INT32_MAX = 2**31 - 1


def top_count(fraction: float, shape: tuple[int, int]) -> int:
    """``k = int(fraction * d_out * d_in)``: the reference's truncation (``int(0.02 * rows * cols)``)."""
    return int(fraction * shape[0] * shape[1])


def top_positions(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Flat int64 indices of the ``k`` largest ``|delta|`` (float32), ties to the lower index; by decreasing size."""
    mag = delta.detach().to(torch.float32).abs().flatten()
    if not bool(torch.isfinite(mag).all()):
        raise FloatingPointError("the LoRA update B A has NaN/inf entries; its key positions are undefined")
    k = max(0, min(int(k), mag.numel()))
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=mag.device)
    kth = torch.topk(mag, k, sorted=False).values.min()
    above = torch.nonzero(mag > kth).squeeze(1)
    tied = torch.nonzero(mag == kth).squeeze(1)[: k - above.numel()]
    chosen = torch.cat([above, tied]).sort().values
    return chosen[torch.sort(mag[chosen], descending=True, stable=True).indices]


@dataclass
class Pattern:
    """The unique key positions of one matrix as a CSR pattern of ``(d_out, d_in)``, with the weight of each position
    in the penalty: ``count / total`` (its multiplicity in the list over the list length, or 1 / #unique when
    de-duplicated). Each backend's layout is built on first use and kept (the positions change once per experience):
    the column-major transpose for ``backend="torch"``, the column-tiled order for ``"cpp"``."""

    shape: tuple[int, int]
    crow: torch.Tensor  # (d_out + 1,) int32
    col: torch.Tensor  # (U,) int32, row-major order
    count: torch.Tensor  # (U,) int32
    total: int
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, flat: torch.Tensor, shape: tuple[int, int], deduplicate: bool) -> Pattern:
        d_out, d_in = shape
        unique, counts = torch.unique(flat.long(), return_counts=True)  # sorted = row-major
        if deduplicate:
            counts = torch.ones_like(counts)
        rows, cols = unique // d_in, unique % d_in
        crow = torch.searchsorted(rows, torch.arange(d_out + 1, device=rows.device), out_int32=True)
        return cls(shape, crow, cols.int(), counts.int(), int(counts.sum()))

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        if ("weight", dtype) not in self._cache:
            self._cache["weight", dtype] = self.count.to(dtype) / self.total
        return self._cache["weight", dtype]

    def transpose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(crow_t, row_t, perm)``: the pattern in column-major order (``perm``: int64, of the row-major entries)."""
        if "transpose" not in self._cache:
            d_out, d_in = self.shape
            rows = torch.repeat_interleave(torch.arange(d_out, device=self.crow.device), self.crow.diff().long())
            perm = torch.argsort(self.col.long() * d_out + rows)
            arange = torch.arange(d_in + 1, device=self.crow.device)
            crow_t = torch.searchsorted(self.col[perm].long(), arange, out_int32=True)
            self._cache["transpose"] = (crow_t, rows[perm].int(), perm)
        return self._cache["transpose"]

    def tiled(self, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ptr, col, weight)`` in the C++ pass's column-tiled order (``kernels.key_penalty.tile_layout``)."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        key = ("tiled", tile_columns(rank, dtype), dtype)
        if key not in self._cache:
            weight = self.count.to(dtype) / self.total  # the row-major weights are not kept: the C++ pass reads these
            self._cache[key] = tile_layout(self.crow, self.col, weight, self.shape[1], key[1])
        return self._cache[key]

    def arguments(self, A: torch.Tensor, backend: str = "auto") -> dict:  # noqa: N803
        """Keyword arguments of ``kernels.key_penalty.gathered_abs_mean`` for the adapter factor ``A`` (``(r, d_in)``)
        in the layout the chosen backend reads (C++: the column-tiled one; torch: CSR and its transpose)."""
        chosen = resolve_backend(backend, A.device)
        if chosen == "cpp":
            ptr, col, weight = self.tiled(A.shape[0], A.dtype)
            return {"crow": ptr, "col": col, "weight": weight, "backend": chosen}
        weight = self.weight(A.dtype)
        return {"crow": self.crow, "col": self.col, "weight": weight, "transpose": self.transpose(), "backend": chosen}

    def nbytes(self) -> int:
        """Bytes held: the CSR pattern, its counts and every layout built so far."""
        tensors = [self.crow, self.col, self.count]
        for value in self._cache.values():
            tensors.extend(value if isinstance(value, tuple) else (value,))
        return sum(t.numel() * t.element_size() for t in tensors)


class KeyPositions(nn.Module):
    """Cumulative key positions of every adapted matrix over a stream (module docstring): ``slots`` experiences."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]], slots: int, fraction: float) -> None:
        super().__init__()
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"method.top_percent={100 * fraction}; allowed: 0 < top_percent <= 100")
        self.shapes = {n: (int(s[0]), int(s[1])) for n, s in shapes.items()}
        self.fraction = float(fraction)
        self.counts = {n: top_count(self.fraction, s) for n, s in self.shapes.items()}
        starts = torch.cumsum(torch.tensor([0, *self.counts.values()]), 0).tolist()
        self.offsets = dict(zip(self.shapes, zip(starts[:-1], starts[1:], strict=True), strict=True))
        big = max((s[0] * s[1] for s in self.shapes.values()), default=0) > INT32_MAX
        dtype = torch.long if big else torch.int32
        self.register_buffer("positions", torch.zeros((max(0, int(slots)), starts[-1]), dtype=dtype))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._patterns: dict[str, Pattern] = {}
        self._pattern_key: tuple | None = None

    @property
    def slots(self) -> int:
        return self.positions.shape[0]

    def identify(self, experience: int, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store experience ``experience``'s top positions of ``|B A|`` for every matrix (A, B of its adapter)."""
        if experience != int(self.filled):
            raise RuntimeError(f"key positions hold {int(self.filled)} experiences; cannot add experience {experience}")
        if experience >= self.slots:
            return  # the last experience: nothing trains after it
        with torch.no_grad():
            for name, (A, B) in factors.items():  # noqa: N806
                start, stop = self.offsets[name]
                flat = top_positions(B @ A, self.counts[name])
                self.positions[experience, start:stop] = flat.to(self.positions.device, self.positions.dtype)
        self.filled.fill_(experience + 1)

    def cumulative(self, name: str) -> torch.Tensor:
        """S_{<=t} of one matrix as flat int64 indices: newest experience first, duplicates kept (the reference)."""
        start, stop = self.offsets[name]
        rows = [self.positions[t, start:stop] for t in range(int(self.filled) - 1, -1, -1)]
        return torch.cat(rows).long() if rows else torch.zeros(0, dtype=torch.long, device=self.positions.device)

    def pairs(self, name: str) -> torch.Tensor:
        """``cumulative(name)`` as the reference's int64 ``(row, col)`` pairs, shape ``(K, 2)``."""
        flat, d_in = self.cumulative(name), self.shapes[name][1]
        return torch.stack([flat // d_in, flat % d_in], dim=1)

    def patterns(self, deduplicate: bool) -> dict[str, Pattern]:
        """The penalty's CSR patterns, rebuilt when the positions, the device or ``deduplicate`` change."""
        key = (int(self.filled), self.positions._version, self.positions.device, bool(deduplicate))
        if key != self._pattern_key:
            self._patterns = {n: Pattern.build(self.cumulative(n), s, deduplicate) for n, s in self.shapes.items()}
            self._pattern_key = key
        return self._patterns

    def penalty(
        self,
        factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        deduplicate: bool = False,
        backend: str = "auto",
    ) -> torch.Tensor:
        """``sum_m mean_{S_{<=t}(m)} |(B_m A_m)_ij|`` (the caller divides by the number of matrices); ``backend``:
        ``kernels.key_penalty.BACKENDS``."""
        first = next(iter(factors.values()), None)
        if first is not None and first[0].device != self.positions.device:
            self.to(first[0].device)  # adapters moved after the keys were made: follow them (patterns rebuild)
        patterns = self.patterns(deduplicate)
        terms = [
            gathered_abs_mean(A, B, **patterns[n].arguments(A, backend))
            for n, (A, B) in factors.items()
            if patterns[n].col.numel()
        ]
        if not terms:
            return torch.zeros((), device=self.positions.device)
        return torch.stack(terms).sum()

    def nbytes(self) -> int:
        """Bytes of the stored positions (the state dict's ``positions`` buffer)."""
        return self.positions.numel() * self.positions.element_size()
