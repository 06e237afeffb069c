"""The Lightning module and sampler of the letters pretraining (:func:`cl.modules.prompt_pretrain.pretrain`): the
backbone with a linear head over the letter classes (thrown away after pretraining), AdamW (weight decay 0.05) with a
one-cycle schedule stepped every batch, cross-entropy with label smoothing 0.1; a new permutation of the images every
epoch from one seeded generator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler


class LettersClassifier(L.LightningModule):
    """``net`` and a linear head over ``n_classes``; ``correct`` / ``total`` count the current epoch's predictions."""

    def __init__(self, net: torch.nn.Module, n_classes: int, lr: float, total_steps: int) -> None:
        super().__init__()
        self.net = net
        self.head = torch.nn.Linear(net.num_features, n_classes)
        self.lr, self.total_steps = lr, total_steps
        self.correct = self.total = 0

    def on_train_epoch_start(self) -> None:
        self.correct = self.total = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.head(self.net(x))
        self.correct += int((logits.argmax(1) == y).sum())
        self.total += len(y)
        return F.cross_entropy(logits, y, label_smoothing=0.1)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.total_steps, pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class EpochPermutation(Sampler[int]):
    """A new permutation of ``range(n)`` from ``generator`` at every ``iter`` (every epoch)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())
