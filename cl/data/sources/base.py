"""The value every dataset loader returns: train and test datasets, class names, and coarse labels if any."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of import time
    from torch.utils.data import Dataset


@dataclass
class SplitDatasets:
    """Train/test datasets of one benchmark.

    ``train`` and ``test`` have ``.targets: list[int]`` and ``__getitem__ -> (CxHxW float tensor, int label)``;
    ``classes[label]`` is the class name; ``coarse_train`` / ``coarse_test`` hold the coarse (super-class) label of
    each sample where the dataset has them (CIFAR-100's 20 super-classes), else ``None``.
    """

    train: Dataset
    test: Dataset
    classes: list[str]
    coarse_train: list[int] | None = None
    coarse_test: list[int] | None = None

    def __post_init__(self) -> None:
        for split, ds, coarse in (("train", self.train, self.coarse_train), ("test", self.test, self.coarse_test)):
            targets = ds.targets
            if targets and not 0 <= min(targets) <= max(targets) < len(self.classes):
                raise ValueError(
                    f"{split} labels span [{min(targets)}, {max(targets)}] but there are only "
                    f"{len(self.classes)} class names"
                )
            if coarse is not None and len(coarse) != len(targets):
                raise ValueError(f"coarse_{split} has {len(coarse)} labels for {len(targets)} samples")
