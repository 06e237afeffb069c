"""Sample pools over a stream: the data of the experiences a checkpoint has seen, addressed by exact sample keys.

A sample key is ``(experience, source_index)``: the index into ``stream.source.train`` (or ``.test``) and the
experience whose view holds it. In class- and task-incremental streams every source index belongs to one experience;
in domain-incremental streams the same index appears once per experience (under another input transform), so the key
needs both. Pools yield ``(x, y, experience)`` so that task-aware masks can be applied per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

Key = tuple[int, int]


def experience_keys(stream: Any, experiences: Sequence[int], split: str) -> list[Key]:
    """Every key of ``split`` ('train' or 'test') of the given experiences, in stream order."""
    out: list[Key] = []
    for e in experiences:
        exp = stream.experiences[e]
        out.extend((e, int(i)) for i in (exp.train_indices if split == "train" else exp.test_indices))
    return out


def labels_of(stream: Any, keys: Sequence[Key], split: str) -> list[int]:
    """The labels of ``keys`` (read from the source dataset's ``targets``, no image is loaded)."""
    targets = (stream.source.train if split == "train" else stream.source.test).targets
    return [int(targets[i]) for _, i in keys]


class PoolDataset(Dataset):
    """The samples ``keys`` of ``split``, each read through its experience's own view; items are ``(x, y, e)``."""

    def __init__(self, stream: Any, keys: Sequence[Key], split: str) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}; allowed: ['train', 'test']")
        self.stream, self.keys, self.split = stream, list(keys), split
        self._pos: dict[int, dict[int, int]] = {}
        for e in sorted({e for e, _ in self.keys}):
            exp = stream.experiences[e]
            idx = exp.train_indices if split == "train" else exp.test_indices
            self._pos[e] = {int(i): k for k, i in enumerate(idx)}
        self.targets = labels_of(stream, self.keys, split)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, k: int) -> tuple[Any, int, int]:
        e, i = self.keys[k]
        exp = self.stream.experiences[e]
        x, y = (exp.train if self.split == "train" else exp.test)[self._pos[e][i]]
        return x, int(y), e
