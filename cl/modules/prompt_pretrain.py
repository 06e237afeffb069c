"""Offline pretraining of the tiny CPU ViT for prompt methods on synthetic *letters* (no digits), so that the
offline default (CODA-Prompt on scikit-learn's digits) starts, like the paper's ViT-B/16, from a backbone that has
learned something on data disjoint from the stream.

Protocol (documented in conf/experiment/coda_digits.yaml): the classes are 38 letter shapes (A-Z and the lower-case
letters whose shape differs from their capital: a b d e f g h n q r t y), rendered from the fonts that ship with
matplotlib (DejaVu, STIX, Computer Modern; 21 faces), with a random affine jitter (rotation, shear, scale, shift) and
a random stroke width, then processed exactly like the UCI optdigits images behind scikit-learn's digits: a
size-normalised 32x32 binary bitmap, counted in 4x4 blocks (8x8 image, values 0..16, divided by 16), resized bilinear
to the backbone's input size. No digit glyph and no digits image is used, so the stream's classes are never seen in
pretraining (in the spirit of ImageNet -> CIFAR, but with disjoint classes). The ViT (+ a linear head that is thrown
away) is trained with AdamW; only the backbone's state dict is saved (timm format, atomic write).

``pretrained_vit(weights=PATH, ...)`` is the Hydra target of ``conf/backbone/vit_tiny_letters.yaml``: it pretrains
and writes PATH if it is missing (several minutes on 2 CPU cores; the RNG of the run is not touched), then builds the
:class:`cl.backbones.Backbone` from that file. ``python -m cl.modules.prompt_pretrain --out PATH`` does the same as a
separate command; its defaults are the config's ``pretrain_cfg``. The weights of the offline default (1 channel,
16 px) are committed, made by::

    python -m cl.modules.prompt_pretrain --out assets/vit_tiny_letters_16px_1ch.pt

(the same recipe; bit-identical floats are not promised across CPUs and thread counts).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrty"
FONT_PREFIXES = ("DejaVu", "STIXGeneral", "cm")
log = logging.getLogger(__name__)


def font_files() -> list[Path]:
    """The text fonts shipped with matplotlib (symbol-only faces excluded)."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    skip = ("cmex10", "cmsy10", "cmmi10", "Display")
    fonts = sorted(
        p for p in ttf.glob("*.ttf") if p.name.startswith(FONT_PREFIXES) and not any(s in p.name for s in skip)
    )
    if not fonts:
        raise FileNotFoundError(f"no fonts found under {ttf}; matplotlib's font folder is needed to render letters")
    return fonts


def _glyphs(size: int = 64) -> tuple[Any, Any]:
    """Every (font, letter) glyph, cropped to its bounding box and centred on a ``size`` canvas: (G, size, size)."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    images, labels = [], []
    for path in font_files():
        font = ImageFont.truetype(str(path), int(size * 0.7))
        for label, ch in enumerate(LETTERS):
            canvas = Image.new("L", (2 * size, 2 * size), 0)
            ImageDraw.Draw(canvas).text((size // 2, size // 4), ch, fill=255, font=font)
            box = canvas.getbbox()
            if box is None:
                continue
            glyph = canvas.crop(box)
            w, h = glyph.size
            scale = (size * 0.8) / max(w, h)  # size-normalised, aspect kept (as optdigits)
            glyph = glyph.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            out = Image.new("L", (size, size), 0)
            out.paste(glyph, ((size - glyph.size[0]) // 2, (size - glyph.size[1]) // 2))
            images.append(np.asarray(out, dtype=np.float32) / 255.0)
            labels.append(label)
    return torch.tensor(np.stack(images))[:, None], torch.tensor(labels)


def render_letters(samples_per_class: int, image_size: int, seed: int = 0) -> tuple[Any, Any]:
    """``samples_per_class`` jittered optdigits-style images per letter: ``(N, 1, image_size, image_size)``, labels."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    glyphs, glyph_labels = _glyphs()
    n_cls = len(LETTERS)
    picks = []
    for c in range(n_cls):
        idx = (glyph_labels == c).nonzero().flatten()
        picks.append(idx[torch.randint(len(idx), (samples_per_class,), generator=gen)])
    pick = torch.cat(picks)
    x, y = glyphs[pick], glyph_labels[pick]
    n = len(pick)
    ang = (torch.rand(n, generator=gen) - 0.5) * 0.5  # +-14 degrees
    shear = (torch.rand(n, generator=gen) - 0.5) * 0.6
    sx = 1.0 + (torch.rand(n, generator=gen) - 0.5) * 0.4
    sy = 1.0 + (torch.rand(n, generator=gen) - 0.5) * 0.3
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.2
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, (-sin + shear) * sx
    theta[:, 1, 0], theta[:, 1, 1] = sin * sy, cos * sy
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, [n, 1, 32, 32], align_corners=False)
    bitmap = F.grid_sample(x, grid, align_corners=False)  # 32x32, like the optdigits bitmaps
    thick = torch.rand(n, generator=gen) < 0.5  # random stroke width
    bitmap = torch.where(thick[:, None, None, None], F.max_pool2d(bitmap, 3, 1, 1), bitmap)
    thresh = 0.25 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
    binary = (bitmap > thresh).float()
    img = F.avg_pool2d(binary, 4) * 16.0  # 4x4 block counts: 8x8 values 0..16
    img = torch.round(img) / 16.0
    if image_size != 8:
        img = F.interpolate(img, size=(image_size, image_size), mode="bilinear")
    return img, y


def pretrain(
    backbone_kwargs: dict[str, Any],
    out: str | os.PathLike[str],
    samples_per_class: int = 200,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``Backbone(**backbone_kwargs)`` on the letters and write its state dict to ``out``; returns stats.

    Trained by Lightning's ``Trainer`` on one CPU device whatever the run's trainer, so the weights do not depend on
    the machine's accelerator (recipe: :mod:`cl.modules.letters_classifier`)."""
    import time

    import lightning as L
    import torch
    from lightning.fabric.plugins.environments import LightningEnvironment
    from torch.utils.data import DataLoader, TensorDataset

    from cl.backbones import Backbone
    from cl.modules.letters_classifier import EpochPermutation, LettersClassifier
    from cl.utils.atomic import write_with

    start = time.perf_counter()
    with torch.random.fork_rng():  # the caller's RNG (the run's seed) is left as it was
        torch.manual_seed(seed)
        kwargs = {k: v for k, v in backbone_kwargs.items() if k not in ("pretrained", "weights")}
        in_chans = int(kwargs.get("in_chans", 1))
        x, y = render_letters(samples_per_class, int(kwargs.get("img_size") or 16), seed)
        x = x.expand(-1, in_chans, -1, -1).contiguous()
        steps = epochs * ((len(y) + batch_size - 1) // batch_size)
        module = LettersClassifier(Backbone(**kwargs), len(LETTERS), lr, steps)
        order = EpochPermutation(len(y), torch.Generator().manual_seed(seed))
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, sampler=order)
        trainer = L.Trainer(  # one local process: no SLURM environment or requeue signal handlers for this fit
            accelerator="cpu",
            devices=1,
            plugins=[LightningEnvironment()],
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, loader)
        state = {k: v.detach().clone() for k, v in module.net.model.state_dict().items()}
        write_with(out, lambda tmp: torch.save(state, tmp))
    stats = {"train_acc_last_epoch": module.correct / max(module.total, 1), "seconds": time.perf_counter() - start}
    log.info("pretrained %s on letters: %s -> %s", kwargs.get("name"), stats, out)
    return stats


def pretrained_vit(weights: str, pretrain_cfg: dict[str, Any] | None = None, **backbone_kwargs: Any) -> Any:
    """A :class:`cl.backbones.Backbone` loaded from ``weights``, pretrained on letters first if the file is missing."""
    from cl.backbones import Backbone

    path = Path(os.path.expanduser(str(weights)))
    if not path.is_file():
        log.warning("backbone.weights=%s is missing: pretraining the backbone on synthetic letters first", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pretrain(backbone_kwargs, path, **dict(pretrain_cfg or {}))
    return Backbone(weights=str(path), **{k: v for k, v in backbone_kwargs.items() if k != "pretrained"})


def main(argv: list[str] | None = None) -> None:
    """``python -m cl.modules.prompt_pretrain --out PATH``: pretrain the tiny ViT of conf/backbone/vit_tiny.yaml."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where to write the backbone state dict (.pt)")
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--samples-per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    kwargs = dict(
        name="vit_tiny_patch16_224",
        in_chans=args.in_chans,
        img_size=args.img_size,
        patch_size=4,
        embed_dim=96,
        depth=4,
        num_heads=3,
    )
    stats = pretrain(
        kwargs,
        args.out,
        samples_per_class=args.samples_per_class,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    print(stats)


if __name__ == "__main__":
    main()
