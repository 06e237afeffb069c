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


@pytest.mark.parametrize("slot", [True, False], ids=["call_slot", "pre_hook"])
@pytest.mark.parametrize("kind", ["parameterless", "late_submodule", "outside"])
def test_work_that_changes_mid_fit_in_one_watched_module_is_counted(kind, slot, monkeypatch):
    """Each kind of watch, through the call slot and through the pre-hook used where torch has no slot."""
    from cl.callbacks import flop_steps

    monkeypatch.setattr(flop_steps, "_CALL_SLOT", slot and flop_steps._CALL_SLOT)
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
        assert not m._forward_pre_hooks and not m._forward_hooks and "_compiled_call_impl" not in m.__dict__
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert not torch.nn.modules.module._global_forward_hooks


def test_a_parameter_owner_without_counted_ops_is_dropped_from_the_watch_after_a_traced_step():
    """After the first (traced) step, watched are the modules that ran a counted op (the linear layer, the
    parameterless Gram) and the parameter owner not called yet; the LayerNorm, called without a counted op, is not."""
    from cl.analysis.flops import LightFlopCounter
    from cl.callbacks.flop_steps import StepCache

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.norm, self.gram, self.later = nn.Linear(4, 4), nn.LayerNorm(4), Gram(), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm(self.lin(x))
            return self.gram(h, h[:2])

    net, x = Net(), torch.randn(8, 4)
    cache = StepCache(net)
    assert cache.watched == {net.lin, net.norm, net.later}  # the parameter owners, before any traced step
    assert cache.open_window("batch")
    with LightFlopCounter(cache.counted) as traced:
        net(x).sum().backward()
    cache.step_flops = traced.total
    assert cache.close_window() == traced.total > 0
    assert cache.watched == {net.lin, net.gram, net.later}
    assert not net.norm._forward_pre_hooks and "_compiled_call_impl" not in net.norm.__dict__
    assert not cache.open_window("batch")  # the same step again: predicted, not traced
    net(x).sum().backward()
    assert cache.close_window() == traced.total
    cache.close()
    assert all(not m._forward_pre_hooks and "_compiled_call_impl" not in m.__dict__ for m in net.modules())


def test_copies_of_a_watched_module_are_plain_and_a_compiled_call_is_kept():
    """A watched module records its calls through its call slot (``_compiled_call_impl``): a deep copy or a pickle
    made mid-fit is a plain module computing with its own weights, unrecorded; a module's own compiled call (here a
    stand-in) is what the watch calls, and it is back in place after ``close``."""
    import copy
    import pickle

    from cl.callbacks.flop_steps import _CALL_SLOT, StepCache

    if not _CALL_SLOT:
        pytest.skip("this torch has no call slot: the watch is a forward pre-hook")
    net, other, x = nn.Sequential(nn.Linear(4, 4)), nn.Linear(4, 4), torch.randn(8, 4)
    compiled_calls = []

    def compiled(*args: torch.Tensor) -> torch.Tensor:
        compiled_calls.append(args[0].shape)
        return other._call_impl(*args)

    other._compiled_call_impl = compiled
    cache = StepCache(net)
    cache._watch(other)
    cache._calls = []  # as in an untraced step's window: watched calls are recorded
    deep, pickled = copy.deepcopy(net[0]), pickle.loads(pickle.dumps(net[0]))
    with torch.no_grad():
        deep.weight.add_(1.0)
        pickled.weight.add_(2.0)
    for clone, shift in ((deep, 1.0), (pickled, 2.0)):
        assert "_compiled_call_impl" not in clone.__dict__
        assert torch.allclose(clone(x), net[0](x) + shift * x.sum(1, keepdim=True), atol=1e-5)
    assert torch.equal(other(x), nn.functional.linear(x, other.weight, other.bias))
    assert list(cache._calls[0::4]) == [net[0], net[0], other]  # the two calls of net[0] above, then other's
    assert compiled_calls == [x.shape]
    cache.close()
    assert other._compiled_call_impl is compiled and "_compiled_call_impl" not in net[0].__dict__


class NormCalls(L.LightningModule):
    """A linear layer, then a LayerNorm called 0, 1 or 2 times depending on the step (no FLOPs in any of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.norm = nn.Linear(4, 4), nn.LayerNorm(4)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        h = self.lin(batch[0])
        for _ in range(min(batch_idx, 2) if batch_idx < 3 else 1):  # steps 0, 1, 2, 3+: 0, 1, 2, 1 norm calls
            h = self.norm(h)
        return h.square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_steps_fingerprinted_with_a_module_dropped_later_are_resolved():
    """Step 1 calls the LayerNorm first (still watched: an owner not called in a traced step), so its fingerprint is
    new and it waits for a trace; step 2 is traced, calls the norm twice (another fingerprint) and drops it from the
    watch. Step 1's fingerprint, re-filtered without the norm, is step 0's: it gets that count at once, and no later
    step is traced (without the re-filter step 1 would wait for a fingerprint no step can give any more)."""
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(48, 4)), batch_size=8)
    totals, counters = {}, {}
    for mode in ("full", "cached"):
        counters[mode] = FlopCounter(mode=mode)
        totals[mode] = _fit(NormCalls(), counters[mode], data)
    assert totals["cached"]["flops_untraced_steps"] == 0
    assert totals["cached"]["flops"] == totals["full"]["flops"] > 0
    assert counters["cached"].traced_steps == 2  # step 0 and step 2 (step 2 because step 1 was new)
