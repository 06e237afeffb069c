"""Bag datasets and the continual MIL stream built from them.

A bag item is ``(x, y, instance_labels, coords)``: ``x`` the instance features (N, D) (or packed, see
:mod:`cl.data.mil.packing`), ``y`` the bag label, ``instance_labels`` (N,) long with -1 where a patch label is unknown,
``coords`` (N, 2) long, the patches' positions (pixels at level 0 for CLAM features, grid cells for ``digit_bags``).
Batches hold one bag (``data.batch_size: 1``, as the reference; bags differ in N) unless the bags are packed.

Tasks are datasets/organs: :class:`MILTasks` holds each task's train and test bags with *global* labels, and
:func:`build_mil_stream` (``scenario=mil``) turns them into the engine's :class:`cl.data.stream.Stream`: one experience
per task in the configured order, domain-incremental when every task has the same label space (the continual
instance/localisation setup: normal vs tumor in every organ) and class-incremental when the tasks' classes are
disjoint (the continual bag setup: TCGA subtypes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from cl.data.mil.packing import pack_bag
from cl.data.sources.base import SplitDatasets
from cl.data.stream import Experience, Stream

BagArrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # features (N, D), coords (N, 2), instance labels (N,)


class BagDataset(Dataset):
    """Bags named by id, read through ``reader(bag_id) -> (features, coords, instance_labels)`` on access."""

    def __init__(
        self,
        bag_ids: list[str],
        labels: list[int],
        reader: Callable[[str], BagArrays],
        pad_to: int | None = None,
        seed: int = 0,
    ) -> None:
        if len(bag_ids) != len(labels):
            raise ValueError(f"{len(bag_ids)} bags but {len(labels)} labels")
        self.bag_ids, self.targets, self.reader = list(bag_ids), [int(v) for v in labels], reader
        self.pad_to, self.seed = pad_to, int(seed)

    def __len__(self) -> int:
        return len(self.bag_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
        features, coords, inst = self.reader(self.bag_ids[index])
        features = features.float()
        if self.pad_to is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            features, kept = pack_bag(features, int(self.pad_to), gen)
            n = int(self.pad_to)
            coords = torch.cat([coords[kept], coords.new_full((n - len(kept), 2), -1)])
            inst = torch.cat([inst[kept], inst.new_full((n - len(kept),), -1)])
        return features, self.targets[index], inst.long(), coords.long()


class ConcatBags(ConcatDataset):
    """All tasks' bags of one split, with ``.targets`` (what :class:`SplitDatasets` and unlearning read)."""

    def __init__(self, parts: list[BagDataset]) -> None:
        super().__init__(parts)
        self.targets = [t for p in parts for t in p.targets]


@dataclass
class MILTask:
    """One task (dataset or organ): the global class ids it holds and its train/test bags."""

    name: str
    classes: list[int]
    train: BagDataset
    test: BagDataset


@dataclass
class MILTasks:
    """What a MIL ``data.source`` returns: the tasks in stream order and the global class names."""

    tasks: list[MILTask]
    classes: list[str]
    feature_dim: int

    def split_datasets(self) -> SplitDatasets:
        return SplitDatasets(
            train=ConcatBags([t.train for t in self.tasks]),
            test=ConcatBags([t.test for t in self.tasks]),
            classes=self.classes,
        )


def build_mil_stream(datasets: MILTasks, name: str = "auto") -> Stream:
    """One experience per task (see the module docstring); ``name``: ``auto`` | ``domain`` | ``class``."""
    if not isinstance(datasets, MILTasks):
        raise ValueError("scenario=mil needs a MIL data source (data=mil_digit_bags, mil_cm16_paip, mil_tcga, ...)")
    sets = [sorted(t.classes) for t in datasets.tasks]
    shared = all(s == sets[0] for s in sets)
    disjoint = len({c for s in sets for c in s}) == sum(len(s) for s in sets)
    if name == "auto":
        name = "domain" if shared else "class"
    if name not in ("domain", "class"):
        raise ValueError(f"scenario.name={name!r} for a MIL stream; allowed: ['auto', 'domain', 'class']")
    if name == "domain" and not shared:
        raise ValueError(f"scenario.name=domain needs every task to hold the same classes; the tasks hold {sets}")
    if name == "class" and not disjoint:
        raise ValueError(f"scenario.name=class needs tasks with disjoint classes; the tasks hold {sets}")
    source = datasets.split_datasets()
    experiences, tr0, te0 = [], 0, 0
    for i, task in enumerate(datasets.tasks):
        tr = list(range(tr0, tr0 + len(task.train)))
        te = list(range(te0, te0 + len(task.test)))
        tr0, te0 = tr0 + len(task.train), te0 + len(task.test)
        experiences.append(
            Experience(i, sorted(task.classes), 0, Subset(source.train, tr), Subset(source.test, te), tr, te)
        )
    n_classes = len(datasets.classes)
    return Stream(name, experiences, n_classes, list(range(n_classes)), source)
