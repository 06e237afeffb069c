"""The cached FLOP counter's fingerprint watches only some modules (cl/callbacks/flop_steps.py): these steps change
their work mid-``fit`` where only one kind of watched module can see it, and the cached count must still equal the full
count (a fingerprint that missed the change would reuse the earlier step's count for the later steps)."""

from __future__ import annotations

from contextlib import nullcontext

import lightning as L
import pytest
import torch
from torch import nn

from cl.callbacks.flops import FlopCounter


class Gram(nn.Module):
    """No parameters, one matmul: ``h @ bank^T``."""

    def forward(self, h: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        return h @ bank.T


class Switching(L.LightningModule):
    """One linear layer, then extra work that changes after ``switch_at`` steps at the same batch shape."""

    def __init__(self, kind: str, switch_at: int = 2) -> None:
        super().__init__()
        self.kind, self.switch_at = kind, switch_at
        self.lin = nn.Linear(4, 4)
        self.gram = Gram()
        self.register_buffer("bank", torch.randn(6, 4))
        self.extra = nn.Linear(4, 4)  # a submodule first called mid-fit ("late_submodule")
        self.outside = [nn.Linear(2, 4)]  # a teacher kept outside the module tree ("outside")
        self.switched = False

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        h = self.lin(batch[0])
        if self.kind == "parameterless":  # the bank grows from 2 to 6 rows: only Gram's input shows it
            h = self.gram(h, self.bank[: 6 if self.switched else 2]).sum(1, keepdim=True) * h
        elif self.kind == "late_submodule" and self.switched:
            h = h + self.extra(h)
        elif self.kind == "outside":  # the teacher reads 4 then all 8 rows
            with torch.no_grad():
                t = self.outside[0](batch[0][: 8 if self.switched else 4, :2]).mean()
            h = h + t
        return h.square().mean()

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if batch_idx + 1 == self.switch_at:
            self.switched = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module: L.LightningModule, counter: FlopCounter, batches: object, max_epochs: int = 1) -> dict:
    trainer = L.Trainer(
        max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[counter],
    )  # fmt: skip
    trainer.fit(module, batches)
    return counter.report_metrics()


@pytest.mark.parametrize("kind", ["parameterless", "late_submodule", "outside"])
def test_work_that_changes_mid_fit_in_one_watched_module_is_counted(kind):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(48, 4)), batch_size=8)
    totals, counters = {}, {}
    for mode in ("full", "cached"):
        counters[mode] = FlopCounter(mode=mode)
        totals[mode] = _fit(Switching(kind), counters[mode], data)
    unchanged = _fit(Switching(kind, switch_at=100), FlopCounter(mode="full"), data)["flops"]
    assert totals["full"]["flops"] > unchanged  # the change is work: reusing the first step's count would miss it
    assert totals["cached"]["flops_untraced_steps"] == 0
    assert totals["cached"]["flops"] == totals["full"]["flops"]
    # the first step, and the step after the first changed one (which is counted when that one is traced)
    assert counters["cached"].traced_steps == 2


def test_the_switching_count_by_hand():
    """The full count compared above, for ``parameterless``: 6 steps of 8 rows, the bank of 2 rows then 6."""
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(48, 4)), batch_size=8)
    lin = 2 * (2 * 8 * 4 * 4)  # forward and weight gradient (the input needs none)
    gram = sum(2 * (2 * 8 * 4 * n) for n in (2, 2, 6, 6, 6, 6))  # forward and the gradient of h (the bank: none)
    for mode in ("full", "cached"):
        assert _fit(Switching("parameterless"), FlopCounter(mode=mode), data)["flops"] == 6 * lin + gram


def test_two_traced_steps_with_one_fingerprint_and_different_counts_trace_the_rest():
    """Work outside every module (a matmul in ``training_step`` on a second batch tensor) that differs between two
    batch structures whose watched calls are equal: the counter warns and traces every later step, so the total
    stays exact."""

    class Outside(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.w = nn.Parameter(torch.randn(6, 4))

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, z = batch
            return self.lin(x).square().mean() + (z @ self.w[: z.shape[1]]).square().mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x = torch.randn(8, 4)
    batches = [(x, torch.randn(8, 2)), (x, torch.randn(8, 2)), (x, torch.randn(8, 6)), (x, torch.randn(8, 6))]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    totals, counters = {}, {}
    for mode in ("full", "cached"):
        counters[mode] = FlopCounter(mode=mode)
        with pytest.warns(UserWarning, match="counted different FLOPs") if mode == "cached" else nullcontext():
            totals[mode] = _fit(Outside(), counters[mode], loader)
    assert totals["cached"]["flops"] == totals["full"]["flops"]
    assert counters["cached"].traced_steps == 3  # the first (8, 2) step, the first (8, 6) step, then every step


def test_hooks_are_removed_after_fit():
    module = Switching("outside")
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(48, 4)), batch_size=8)
    _fit(module, FlopCounter(mode="cached"), data)
    for m in [*module.modules(), *module.outside]:
        assert not m._forward_pre_hooks and not m._forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert not torch.nn.modules.module._global_forward_hooks
