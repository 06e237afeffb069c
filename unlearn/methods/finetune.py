"""``finetune``: fine-tune on the retain set only and rely on catastrophic forgetting of D_f (the SSD reference's
"finetune" baseline: 5 epochs, SGD lr 0.02)."""

from __future__ import annotations

from torch.utils.data import Dataset

from unlearn.methods._train_loop import TrainingBaseline
from unlearn.methods.base import UnlearnTask


class Finetune(TrainingBaseline):
    """Cross-entropy training on D_r for ``epochs``."""

    def __init__(self, name: str = "finetune", epochs: int = 5, lr: float = 0.02, optimizer: str = "sgd") -> None:
        super().__init__(name, epochs, lr, optimizer)

    def data(self, task: UnlearnTask) -> Dataset:
        return task.retain
