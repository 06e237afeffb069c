"""``random_label``: amnesiac unlearning (Graves, Nagisetty, Ganesh, AAAI 2021), as the SSD reference runs it: every
forget sample gets a fixed random *wrong* label among the seen classes, the relabelled forget set is mixed with the
retain set, and the model is fine-tuned on the mixture (reference: 3 epochs, lr 1e-4)."""

from __future__ import annotations

import torch
from torch.utils.data import ConcatDataset, Dataset

from unlearn.context import UnlearnConfigError
from unlearn.methods._datasets import Flagged, Relabelled
from unlearn.methods._train_loop import TrainingBaseline
from unlearn.methods.base import UnlearnTask


def wrong_labels(labels: list[int], classes: list[int], seed: int) -> list[int]:
    """A seeded random label for each sample, drawn uniformly among ``classes`` minus its own label."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for y in labels:
        others = [c for c in classes if c != y]
        out.append(others[int(torch.randint(len(others), (1,), generator=gen))])
    return out


class RandomLabel(TrainingBaseline):
    """Fine-tune on D_r ∪ (D_f with random wrong labels)."""

    def __init__(self, name: str = "random_label", epochs: int = 3, lr: float = 1e-4, optimizer: str = "adam") -> None:
        super().__init__(name, epochs, lr, optimizer)

    def check(self, task: UnlearnTask) -> None:
        super().check(task)
        if int(task.mask.sum()) < 2:
            raise UnlearnConfigError("unlearn_method=random_label needs at least two seen classes")

    def data(self, task: UnlearnTask) -> Dataset:
        classes = torch.nonzero(task.mask).flatten().tolist()
        labels = wrong_labels(list(task.forget.targets), classes, task.seed)
        return ConcatDataset([Flagged(task.retain, 0), Relabelled(task.forget, labels)])
