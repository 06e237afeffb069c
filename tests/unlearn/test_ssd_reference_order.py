"""SSD (``importance=batch``, default ``order=reference``) equals the reference code's algorithm on the same weights.

The reference (github if-loops/selective-synaptic-dampening, ``src/forget_full_class_main.py`` and ``src/ssd.py``
``ParameterPerturber.calc_importance`` / ``modify_weight``) is transcribed here independently of the project's pools:
the training set split class by class (``get_classwise_ds``), the retain set in class order, then the forget set,
``DataLoader(ConcatDataset((retain, forget)), 64)`` and ``DataLoader(forget, 64)`` without shuffling, the model in eval
mode, the squared gradient of the batch-mean cross-entropy averaged over batches, selection ``f > alpha * d`` and
``p *= min(lambda * d / f, 1)``. The checkpoint is a ``cnn_small`` trained on all 10 digits in one experience (SSD's
own setting), every weight trained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader

from tests.helpers import compose_config, run_cl

FORGET, ALPHA, LAM = 3, 2.0, 1.0


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("native")
    torch.manual_seed(0)
    ov = ["method=joint", "backbone=cnn_small", "scenario.n_experiences=1", "logger=none"]
    run_cl(compose_config([*ov, "trainer.max_epochs=4", "+trainer.limit_train_batches=1.0"], run_dir))
    return run_dir


def _unlearn(ckpt: Path, out: Path, *overrides: str) -> dict:
    import unlearn.resolvers  # noqa: F401
    from unlearn.pipeline import run_unlearning

    ov = [f"checkpoint={ckpt}", "eval.probe=false", "unlearn_method=ssd", f"forget.classes=[{FORGET}]", *overrides]
    return run_unlearning(compose_config(ov, out, shrink=False, config_name="unlearn"), out, ov)


def _reference_ssd(model: torch.nn.Module, train: torch.utils.data.Dataset, n_classes: int) -> int:
    """The reference's full-class SSD on ``model`` in place; returns the number of dampened entries."""
    classwise: dict[int, list] = {c: [] for c in range(n_classes)}
    for i in range(len(train)):  # get_classwise_ds: (img, label, clabel) grouped by the training label
        x, y = train[i]
        classwise[int(y)].append((x, int(y), int(y)))
    retain = [s for c in range(n_classes) if c != FORGET for s in classwise[c]]  # build_retain_forget_sets
    forget = classwise[FORGET]
    forget_dl = DataLoader(forget, 64)
    full_dl = DataLoader(ConcatDataset((retain, forget)), batch_size=64)
    model.eval()
    params = dict(model.named_parameters())

    def calc_importance(loader: DataLoader) -> dict[str, torch.Tensor]:
        imp = {n: torch.zeros_like(p) for n, p in params.items()}
        for x, _, y in loader:
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    imp[n] += p.grad.clone().pow(2)
        return {n: v / float(len(loader)) for n, v in imp.items()}

    fimp, oimp = calc_importance(forget_dl), calc_importance(full_dl)
    n = 0
    with torch.no_grad():
        for name, p in params.items():
            loc = torch.where(fimp[name] > oimp[name].mul(ALPHA))
            update = (oimp[name].mul(LAM).div(fimp[name]))[loc]
            update[update > 1] = 1
            p[loc] = p[loc].mul(update)
            n += len(loc[0])
    return n


@pytest.mark.slow  # ~60 s CPU: 4 training epochs and three importance passes
def test_batch_importance_in_reference_order_equals_the_reference_code(native, tmp_path):
    from cl.engine.checkpoint import load_checkpoint
    from unlearn.context import load_context

    r = _unlearn(native, tmp_path / "ours", f"unlearn_method.alpha={ALPHA}", f"unlearn_method.lambda={LAM}")
    ours = load_checkpoint(tmp_path / "ours" / "checkpoints" / "unlearned_task_0.ckpt")["state_dict"]

    ctx = load_context(str(native))
    assert bool(ctx.method.seen_classes.all())  # every class seen: the masked logits are the reference's model(x)
    n_ref = _reference_ssd(ctx.method, ctx.stream.source.train, 10)
    ref = ctx.method.state_dict()
    total = sum(p.numel() for p in ctx.method.parameters())
    assert 0 < n_ref < total // 2  # a real selection, neither empty nor everything
    assert r["method_info"]["selected_parameters"] == n_ref and r["method_info"]["order"] == "reference"
    for k, v in ref.items():
        torch.testing.assert_close(ours[k], v, rtol=1e-6, atol=0, msg=k)

    # the shuffled order mixes classes in every batch: I_D shrinks and the same alpha selects many more weights
    s = _unlearn(native, tmp_path / "shuffled", f"unlearn_method.alpha={ALPHA}", "unlearn_method.order=shuffled")
    assert s["method_info"]["selected_parameters"] > 1.5 * n_ref
