"""SSD's ``drop_last`` option: the importances without the trailing partial batch (not the reference's default).

In batch mode a trailing batch of a few samples has a squared batch-mean gradient far above a full batch's (on the
digits ResNet its share of I_f reached 99.7 %, experiments/unlearn_native/README.md "Why SSD fails here");
``drop_last=true`` leaves it out of both loaders. The default keeps it, as the reference code does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from unlearn.context import UnlearnConfigError
from unlearn.methods.base import UnlearnTask
from unlearn.methods.ssd import SSD


def _task(n: int = 10) -> tuple[nn.Module, UnlearnTask]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    data = TensorDataset(torch.randn(n, 3), torch.randint(0, 3, (n,)))
    task = UnlearnTask(
        ctx=None,  # type: ignore[arg-type]  # not read with cache=false
        split=None,  # type: ignore[arg-type]
        forget=data,
        retain=data,
        full=data,
        mask=torch.ones(3, dtype=torch.bool),
        batch_size=4,
        device=torch.device("cpu"),
        seed=0,
        work_dir=Path("."),
    )
    return model, task


def _by_hand(model: nn.Module, data: TensorDataset, batches: list[slice]) -> dict[str, torch.Tensor]:
    """Squared batch-mean cross-entropy gradients averaged over ``batches``."""
    x, y = data.tensors
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for b in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x[b]), y[b]), list(model.parameters()))
        for (n, _), g in zip(model.named_parameters(), grads, strict=True):
            total[n] += g.pow(2)
    return {n: v / len(batches) for n, v in total.items()}


@pytest.mark.parametrize("drop_last", [False, True])
def test_forget_importance_with_and_without_the_trailing_batch(drop_last):
    model, task = _task()
    ssd = SSD(order="shuffled", batch_size=4, cache=False, drop_last=drop_last)
    imp_f, _, _ = ssd.importances(model, task)
    batches = [slice(0, 4), slice(4, 8)] + ([] if drop_last else [slice(8, 10)])
    expected = _by_hand(model, task.forget, batches)
    for name, value in expected.items():
        torch.testing.assert_close(imp_f[name], value, rtol=1e-5, atol=1e-9)
    other = _by_hand(model, task.forget, [slice(0, 4), slice(4, 8)] + ([slice(8, 10)] if drop_last else []))
    assert any(not torch.allclose(imp_f[n], other[n]) for n in other)  # the runt batch changes the importance


def test_drop_last_must_be_a_boolean():
    assert SSD().drop_last is False  # the reference's loaders keep the partial batch
    with pytest.raises(UnlearnConfigError, match="unlearn_method.drop_last='yes'; allowed: true or false"):
        SSD(drop_last="yes")  # type: ignore[arg-type]
