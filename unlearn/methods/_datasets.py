"""Small dataset wrappers the baselines mix: a constant flag per sample, and fixed replacement labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset


class Flagged(Dataset):
    """Items ``(x, y, flag)`` with one constant ``flag`` (e.g. 1 = forget sample, 0 = retain sample)."""

    def __init__(self, base: Dataset, flag: int) -> None:
        self.base, self.flag = base, int(flag)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, k: int) -> tuple[Any, int, int]:
        item = self.base[k]
        return item[0], item[1], self.flag


class Relabelled(Dataset):
    """Items ``(x, labels[k], 1)``: the base samples with fixed replacement labels."""

    def __init__(self, base: Dataset, labels: Sequence[int]) -> None:
        if len(labels) != len(base):
            raise ValueError(f"{len(labels)} labels for {len(base)} samples")
        self.base, self.labels = base, list(labels)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, k: int) -> tuple[Any, int, int]:
        return self.base[k][0], self.labels[k], 1
