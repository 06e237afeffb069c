"""A tiny GCAB on a tiny timm ViT and a 3-experience hand-made stream, for the GCAB tests."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from cl.backbones import Backbone
from cl.data.stream import Experience, Stream
from cl.methods.gcab import GCAB

DIM, HEADS, IMG, PATCH = 12, 2, 8, 4  # 4 patch tokens of 12 features


def tiny_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(
        "vit_tiny_patch16_224", in_chans=1, img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=1, num_heads=HEADS
    )


def tiny_stream(n_exp: int = 3, n: int = 12) -> Stream:
    exps = []
    for i in range(n_exp):
        g = torch.Generator().manual_seed(100 + i)
        classes = [2 * i, 2 * i + 1]
        x = torch.randn(n, 1, IMG, IMG, generator=g)
        y = torch.tensor([classes[k % 2] for k in range(n)])
        ds = TensorDataset(x, y)
        ds.targets = y.tolist()
        exps.append(Experience(i, classes, 0, ds, ds))
    return Stream("class", exps, 2 * n_exp, list(range(2 * n_exp)), None)


def tiny_gcab(stream: Stream | None = None, seed: int = 0, **kw: Any) -> GCAB:
    stream = stream or tiny_stream()
    kw.setdefault("optimizer", partial(torch.optim.AdamW, lr=0.01, weight_decay=0.1))
    kw.setdefault("drop_path", 0.0)
    kw.setdefault("kernel_backend", "torch")
    backbone = tiny_backbone(seed)
    m = GCAB(backbone, stream.num_classes, **kw)
    m.setup_stream(stream)
    return m


def fit(method: GCAB, experience: Experience, steps: int = 3, batch_size: int = 4) -> None:
    """One experience through Lightning's Trainer (the engine's hooks: start, fit, end)."""
    method.on_experience_start(experience)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(method, train_dataloaders=DataLoader(experience.train, batch_size=batch_size))
    method.on_experience_end(experience, lambda ds: DataLoader(ds, batch_size=8))
