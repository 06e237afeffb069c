"""``digit_bags``: an offline continual MIL stream of bags of scikit-learn's digits (1,797 real 8x8 handwritten digits
shipped with scikit-learn), for CPU runs and tests of the CoMEL pipeline.

Each task plays an organ: it has a *target* digit (the "tumor" instance) and its own *background* digits ("normal
tissue"). A bag holds N ~ U[bag_size] instance features; a positive bag (probability ``positive_fraction``) has a
fraction ~ U[witness] of target instances, a negative bag none; bag label 1 iff a target is present. Instances lie on
a square grid (``coords`` = (row, col) cells) with the targets as one contiguous blob (the cells nearest a random
centre), like a tumor region, and instance labels are kept (1 = target) for localisation (AUC, Dice, IoU).

Instance features are the raw pixels (``features="pixels"``, 64-d, scaled to [0, 1]) or the pooled features of the
frozen letters-pretrained tiny ViT (``features="vit_letters"``, 96-d; :mod:`cl.modules.prompt_pretrain`, weights in
``assets/``), the analogue of a frozen pathology encoder. Train bags draw from the fixed digits train split, test bags
from the test split (:func:`cl.data.digits.load_digits`), all from a generator seeded by ``seed``: the same seed gives
the same bags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cl.data.mil.bags import BagDataset, MILTask, MILTasks

FEATURES = ("pixels", "vit_letters")
DEFAULT_TASKS: list[dict[str, Any]] = [
    {"name": "digit0", "target": 0, "background": [4, 5, 6], "bag_size": [16, 48], "witness": [0.1, 0.4]},
    {"name": "digit1", "target": 1, "background": [6, 7, 8], "bag_size": [24, 64], "witness": [0.05, 0.3]},
    {"name": "digit2", "target": 2, "background": [4, 8, 9], "bag_size": [16, 40], "witness": [0.15, 0.5]},
    {"name": "digit3", "target": 3, "background": [5, 7, 9], "bag_size": [32, 64], "witness": [0.05, 0.25]},
]


def _grid_bag(
    pool_pos: torch.Tensor, pool_neg: torch.Tensor, n: int, n_pos: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(instance indices, coords, instance labels) of one bag of ``n`` cells with ``n_pos`` targets in a blob."""
    side = math.ceil(math.sqrt(n))
    cells = torch.randperm(side * side, generator=gen)[:n]
    coords = torch.stack([cells // side, cells % side], dim=1)
    centre = coords[torch.randint(n, (1,), generator=gen)].float()
    order = ((coords.float() - centre) ** 2).sum(1).argsort()
    labels = torch.zeros(n, dtype=torch.long)
    labels[order[:n_pos]] = 1
    idx = pool_neg[torch.randint(len(pool_neg), (n,), generator=gen)]
    if n_pos:
        idx[order[:n_pos]] = pool_pos[torch.randint(len(pool_pos), (n_pos,), generator=gen)]
    return idx, coords, labels


def _make_bags(
    features: torch.Tensor, digits: torch.Tensor, spec: Mapping[str, Any], n_bags: int, pos_frac: float, gen
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], list[int]]:
    pool_pos = torch.nonzero(digits == int(spec["target"])).flatten()
    pool_neg = torch.nonzero(torch.isin(digits, torch.tensor([int(d) for d in spec["background"]]))).flatten()
    lo, hi = (int(v) for v in spec["bag_size"])
    wlo, whi = (float(v) for v in spec["witness"])
    if not 1 <= lo <= hi or not 0 < wlo <= whi <= 1 or int(spec["target"]) in [int(d) for d in spec["background"]]:
        raise ValueError(
            f"data.tasks entry {dict(spec)}: need 1 <= bag_size[0] <= bag_size[1], 0 < witness <= 1 and a "
            "target digit outside background"
        )
    bags, labels = [], []
    for _ in range(n_bags):
        n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        positive = bool(torch.rand((), generator=gen) < pos_frac)
        w = wlo + (whi - wlo) * float(torch.rand((), generator=gen))
        n_pos = max(1, round(w * n)) if positive else 0
        idx, coords, inst = _grid_bag(pool_pos, pool_neg, n, n_pos, gen)
        bags.append((features[idx], coords, inst))
        labels.append(int(positive))
    return bags, labels


def _features(kind: str, weights: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train features, train digits, test features, test digits)."""
    from cl.data.digits import load_digits

    if kind == "pixels":
        split = load_digits(image_size=8, channels=1)
        return split.train.images.flatten(1), split.train.labels, split.test.images.flatten(1), split.test.labels
    from cl.modules.prompt_pretrain import pretrained_vit

    split = load_digits(image_size=16, channels=1)
    kw = dict(name="vit_tiny_patch16_224", in_chans=1, img_size=16, patch_size=4, embed_dim=96, depth=4, num_heads=3)
    net = pretrained_vit(str(weights), **kw).eval()
    with torch.no_grad():
        tr, te = net(split.train.images), net(split.test.images)
    return tr, split.train.labels, te, split.test.labels


def load_digit_bags(
    tasks: Sequence[Mapping[str, Any]] | None = None,
    n_train_bags: int = 64,
    n_test_bags: int = 48,
    positive_fraction: float = 0.5,
    features: str = "pixels",
    weights: str | None = None,
    seed: int = 0,
    pad_to: int | None = None,
    n_tasks: int | None = None,
) -> MILTasks:
    """Build the tasks (``tasks`` default: 4 targets 0-3 with their own backgrounds and bag statistics; the first
    ``n_tasks`` of them when given)."""
    if features not in FEATURES:
        raise ValueError(f"data.source.features={features!r}; allowed: {list(FEATURES)}")
    if features == "vit_letters" and not weights:
        raise ValueError("data.source.features=vit_letters needs data.source.weights (the letters ViT .pt)")
    if n_train_bags < 1 or n_test_bags < 1 or not 0 < positive_fraction < 1:
        raise ValueError("data.source: n_train_bags and n_test_bags must be >= 1 and 0 < positive_fraction < 1")
    specs = list(tasks or DEFAULT_TASKS)
    if n_tasks is not None and not 1 <= n_tasks <= len(specs):
        raise ValueError(f"data.source.n_tasks={n_tasks}; allowed: 1..{len(specs)} (the number of tasks listed)")
    specs = specs[:n_tasks]
    tr_x, tr_d, te_x, te_d = _features(features, weights)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for i, spec in enumerate(specs):
        sets = []
        for x, d, n in ((tr_x, tr_d, n_train_bags), (te_x, te_d, n_test_bags)):
            bags, labels = _make_bags(x, d, spec, n, positive_fraction, gen)
            store = {str(k): b for k, b in enumerate(bags)}
            sets.append(BagDataset(list(store), labels, store.__getitem__, pad_to=pad_to, seed=int(seed) + i))
        out.append(MILTask(str(spec.get("name", f"task{i}")), [0, 1], sets[0], sets[1]))
    return MILTasks(out, ["negative", "positive"], int(tr_x.shape[1]))
