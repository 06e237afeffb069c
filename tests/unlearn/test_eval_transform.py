"""Unlearning reads every pool through the deterministic evaluation transform, also on an augmented dataset
(``data.augment: true``: CIFAR's random crop + flip): two runs give bit-identical reports, and a training pool's item
is the test transform of the stored image. The dataset is CIFAR-10 in its official python layout (tiny pickles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data.test_sources_cifar import C10_NAMES, _dump, _rows
from tests.helpers import compose_config, run_cl


def write_balanced_cifar10(root: Path, per_batch: int = 20, n_test: int = 30) -> None:
    """cifar-10-batches-py in the official layout, labels cycling through the 10 classes (every class in each split)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for b, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        labels = [(j + len(b)) % 10 for j in range(n)]
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        _dump(folder / b, {"batch_label": b, "labels": labels, "data": _rows(images), "filenames": ["x.png"] * n})
    _dump(folder / "batches.meta", {"label_names": C10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072})


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_balanced_cifar10(root)
    run_dir = tmp_path_factory.mktemp("cifar_run")
    torch.manual_seed(0)
    ov = [
        "method=joint",
        "data=cifar10",
        f"paths.data_dir={root}",
        "data.num_workers=0",
        "backbone=cnn_small",
        "backbone.img_size=32",
        "scenario.n_experiences=1",
        "logger=none",
    ]
    run_cl(compose_config(ov, run_dir))
    return run_dir


def _unlearn(ckpt: Path, out: Path, *overrides: str) -> dict:
    import unlearn.resolvers  # noqa: F401
    from unlearn.pipeline import run_unlearning

    ov = [f"checkpoint={ckpt}", "eval.probe=true", *overrides]
    return run_unlearning(compose_config(ov, out, shrink=False, config_name="unlearn"), out, ov)


def test_training_pools_use_the_evaluation_transform(cifar_run):
    from unlearn.context import load_context
    from unlearn.data import PoolDataset, evaluation_views
    from unlearn.forget import SeenData

    ctx = load_context(str(cifar_run))
    src = ctx.stream.source
    assert src.train.transform is not src.test.transform  # augmented training transform
    seen = SeenData(ctx.stream, ctx.experience)
    pool = PoolDataset(ctx.stream, seen.train_keys, "train", evaluation_views(ctx.stream))
    from PIL import Image

    for k in (0, 7, len(pool) - 1):
        i = seen.train_keys[k][1]
        expected = src.test.transform(Image.fromarray(src.train.images[i]))
        assert torch.equal(pool[k][0], expected) and torch.equal(pool[k][0], pool[k][0])
    assert src.train.transform is not src.test.transform  # the source dataset itself is unchanged


@pytest.mark.parametrize("method", ["ssd", "iau"])
def test_two_runs_give_bit_identical_reports(cifar_run, tmp_path, method):
    a = _unlearn(cifar_run, tmp_path / "a", f"unlearn_method={method}", "forget.classes=[3]")
    b = _unlearn(cifar_run, tmp_path / "b", f"unlearn_method={method}", "forget.classes=[3]")
    for r in (a, b):
        r.pop("seconds")
        r["method_info"].pop("importance_cached", None)
    assert a == b
