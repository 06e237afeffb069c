"""Sample pools over a stream: the data of the experiences a checkpoint has seen, addressed by exact sample keys.

A sample key is ``(experience, source_index)``: the index into ``stream.source.train`` (or ``.test``) and the
experience whose view holds it. In class- and task-incremental streams every source index belongs to one experience;
in domain-incremental streams the same index appears once per experience (under another input transform), so the key
needs both. Pools yield ``(x, y, experience)`` so that task-aware masks can be applied per sample.

Training samples are read through the *evaluation* transform (the test set's deterministic resize/crop/normalise,
``cl/data/sources/transforms.py``), never the random training augmentation (``data.augment: true``): accuracies,
MIA scores, probes and SSD/IAU importances are then the same from run to run, as in the reference code (SSD's
``transform_unlearning``). The per-experience input shift of domain streams (rotation, permutation) is kept. Training
baselines that replay the original recipe (``retrain``) read the experiences' own (augmented) views instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
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


def _transform_of(ds: Any) -> Callable[[Any], Any] | None:
    """The image transform of a (possibly wrapped) source dataset, or None when it has none (tensor datasets)."""
    while ds is not None:
        if hasattr(ds, "transform"):
            return ds.transform
        inner = getattr(ds, "dataset", None)
        ds = inner if inner is not None else getattr(ds, "base", None)
    return None


def with_transform(ds: Any, transform: Callable[[Any], Any]) -> Any:
    """A shallow copy of the view ``ds`` (``Subset`` / domain-shift wrappers around a source dataset) whose innermost
    dataset applies ``transform`` instead of its own; the source itself is not modified."""
    if hasattr(ds, "transform"):
        out = copy.copy(ds)
        out.transform = transform
        return out
    for attr in ("dataset", "base"):  # torch Subset, cl.data.stream._DomainShift
        inner = getattr(ds, attr, None)
        if inner is not None:
            out = copy.copy(ds)
            setattr(out, attr, with_transform(inner, transform))
            return out
    raise TypeError(f"{type(ds).__name__}: cannot find the dataset whose transform to replace")


def evaluation_views(stream: Any) -> list[Dataset]:
    """Every experience's training view read through the source's test (evaluation) transform; the views themselves
    when the data has no transform (tensor datasets such as digits) or train and test share one."""
    tf_test, tf_train = _transform_of(stream.source.test), _transform_of(stream.source.train)
    if tf_test is None or tf_train is None or tf_train is tf_test:
        return [exp.train for exp in stream.experiences]
    return [with_transform(exp.train, tf_test) for exp in stream.experiences]


class PoolDataset(Dataset):
    """The samples ``keys`` of ``split``, each read through its experience's view (training samples through the
    evaluation transform, see the module docstring; ``views`` shares them between pools); items are ``(x, y, e)``."""

    def __init__(self, stream: Any, keys: Sequence[Key], split: str, views: Sequence[Dataset] | None = None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}; allowed: ['train', 'test']")
        self.stream, self.keys, self.split = stream, list(keys), split
        if split == "test":
            self.views = [exp.test for exp in stream.experiences]
        else:
            self.views = list(views) if views is not None else evaluation_views(stream)
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
        x, y = self.views[e][self._pos[e][i]]
        return x, int(y), e

    def subset(self, keys: Sequence[Key]) -> PoolDataset:
        """Another pool of the same split and views."""
        return PoolDataset(self.stream, keys, self.split, self.views)

    def grouped_by_class(self) -> PoolDataset:
        """The same samples ordered by label (ascending), stream order within a class: the reference SSD code's
        ``get_classwise_ds`` / ``build_retain_forget_sets`` order."""
        order = sorted(range(len(self.keys)), key=lambda k: self.targets[k])
        return self.subset([self.keys[k] for k in order])
