"""The frozen drive of the fast backend (kernels.fisher_fast, 2.), the blocked CPU product and the BatchNorm rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels import fisher_diagonal
from kernels import fisher_rules as rules
from tests.kernels.models import MLP, ConvNet, rel_err

torch.set_num_threads(1)


class _Spy(torch.autograd.Function):
    """Identity whose backward records that a gradient flowed through it."""

    calls = 0

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        _Spy.calls += 1
        return g


def _data(n: int = 6, d: int = 5, classes: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


def test_no_input_gradient_no_weight_gradient_flags_restored() -> None:
    """The backward stops at the first layer's output (nothing flows into x) and never reaches a parameter; the
    caller's requires_grad flags (one parameter frozen by the caller) come back unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    model[0].bias.requires_grad_(False)
    fired: list[str] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.register_hook(lambda g, name=name: fired.append(name))
    data = _data()
    _Spy.calls = 0
    fast = fisher_diagonal(model, data, forward_fn=lambda x: model(_Spy.apply(x)))
    assert _Spy.calls == 0
    assert fired == []
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]
    ref = fisher_diagonal(model, data, backend="reference")
    assert set(fast.diag) == {"0.weight", "2.weight", "2.bias"}
    for n in ref.diag:
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-5, n


def test_outside_leaf_falls_back_to_layer_drivers() -> None:
    """An input that needs a gradient for a reason outside the model (a tensor the forward_fn adds) defeats the
    frozen drive: the probes notice and the layer outputs drive the backward; the tensor's .grad stays untouched."""
    torch.manual_seed(0)
    model = MLP().double()
    shift = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    data = _data(seed=1)
    fast = fisher_diagonal(model, data, forward_fn=lambda x: model(x + shift))
    ref = fisher_diagonal(model, data, forward_fn=lambda x: model(x + shift), backend="reference")
    assert shift.grad is None
    for n in ref.diag:
        assert ref.diag[n].abs().sum() > 0, n
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-5, n


def _count_probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import kernels.fisher as kf

    calls: list[int] = []
    real = kf._probe_drive
    monkeypatch.setattr(kf, "_probe_drive", lambda *a: (calls.append(1), real(*a))[1])
    return calls


def test_frozen_first_batch_needs_no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every captured layer gets its gradient in the frozen first batch: no probe pass runs, the drive stays frozen
    for the later batches and the result equals the reference."""
    calls = _count_probes(monkeypatch)
    torch.manual_seed(0)
    model = MLP().double()
    data = _data(seed=3)
    fast = fisher_diagonal(model, data)
    assert calls == []
    ref = fisher_diagonal(model, data, backend="reference")
    for n in ref.diag:
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-10, n


def test_probes_after_a_layer_without_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """An outside tensor needing a gradient leaves the frozen first batch without layer gradients: the probes run
    once, the batch is redone driven through the layer outputs and the result equals the reference, also with labels
    drawn from the model (the batch is redone with the labels already drawn)."""
    calls = _count_probes(monkeypatch)
    torch.manual_seed(0)
    model = MLP().double()
    shift = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    data = _data(seed=4)
    fwd = lambda x: model(x + shift)  # noqa: E731
    fast = fisher_diagonal(model, data, forward_fn=fwd)
    assert calls == [1]
    ref = fisher_diagonal(model, data, forward_fn=fwd, backend="reference")
    for n in ref.diag:
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-10, n
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    fast = fisher_diagonal(model, data, forward_fn=fwd, labels="sampled", generator=gen())
    ref = fisher_diagonal(model, data, forward_fn=fwd, labels="sampled", generator=gen(), backend="reference")
    assert calls == [1, 1]
    for n in ref.diag:
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-10, n


def test_layer_the_loss_does_not_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer whose output the loss ignores never gets a gradient (frozen or not): the probes decide and the batch
    is redone; the sums the frozen first batch had added are discarded (else that batch counts twice) and the unused
    layer's Fisher is zero."""

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.side, self.fc2 = nn.Linear(5, 6), nn.Linear(6, 2), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.fc1(x))
            self.side(h)  # computed, never used
            return self.fc2(h)

    calls = _count_probes(monkeypatch)
    torch.manual_seed(0)
    model = Unused().double()
    data = _data(seed=6)
    fast = fisher_diagonal(model, data)
    assert calls == [1]
    ref = fisher_diagonal(model, data, backend="reference")
    assert float(fast.diag["side.weight"].abs().sum()) == 0.0
    for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-10, n


def test_in_place_on_the_first_layer_output() -> None:
    """The first layer's output becomes a leaf: the model's in-place op on it must act on a copy, not the leaf."""

    class InPlaceFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(5, 6)
            self.fc2 = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            h.relu_()
            return self.fc2(h)

    torch.manual_seed(0)
    model = InPlaceFirst().double()
    data = _data(seed=2)
    fast = fisher_diagonal(model, data)
    ref = fisher_diagonal(model, data, backend="reference")
    for n in ref.diag:
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-5, n


@pytest.mark.parametrize("block", [1 << 12, 300 * 230 // 3, 2 * 300 * 230, rules.SEQ_BLOCK])
def test_blocked_sequence_product(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both CPU paths equal the einsum: per sample and per row block (O x K above SEQ_BLOCK; row blocks not dividing
    O) and several samples per bmm (c = SEQ_BLOCK // (O K) not dividing B), through the reused scratch buffer."""
    monkeypatch.setattr(rules, "SEQ_BLOCK", block)
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(7, 5, 300, generator=gen, dtype=torch.float64)
    x = torch.randn(7, 5, 230, generator=gen, dtype=torch.float64)
    expect = torch.einsum("bto,btk->bok", g, x).square().sum(0)
    assert rel_err(rules.seq_sqsum_torch(g, x, None), expect) < 1e-12
    out32 = torch.ones(300, 230)
    rules.seq_sqsum_torch(g, x, None, out32)  # float32 accumulator: added after the float64 product
    assert rel_err(out32.double(), expect + 1) < 1e-6


class _BatchNorms(nn.Module):
    """BatchNorm1d on vectors, and one BatchNorm2d called twice (per-sample sums over both calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(3)
        self.bn1 = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn2(self.conv(x)))
        h = self.bn2(h * h)
        return self.fc(self.bn1(h.mean((2, 3))))


def test_batchnorm_rule_vectors_and_repeated_calls() -> None:
    torch.manual_seed(0)
    model = _BatchNorms().double()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 2, 5, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=gen)
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    fast = fisher_diagonal(model, data)
    ref = fisher_diagonal(model, data, backend="reference")
    assert fast.fallback == ()
    for n in ref.diag:
        assert ref.diag[n].abs().sum() > 0, n
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-5, n


def test_conv_paths_agree_across_the_grouped_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conv2d weights through the grouped-convolution form and through unfold + products give the same diagonal."""
    torch.manual_seed(0)
    model = ConvNet().double()
    gen = torch.Generator().manual_seed(5)
    data = [(torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 4, (5,), generator=gen))]
    monkeypatch.setattr(rules, "GROUPED_MIN_POSITIONS", 1)
    grouped = fisher_diagonal(model, data)
    monkeypatch.setattr(rules, "GROUPED_MIN_POSITIONS", 10**9)
    unfolded = fisher_diagonal(model, data)
    for n in ("c1.weight", "c2.weight", "c3.weight"):
        assert rel_err(grouped.diag[n], unfolded.diag[n]) < 1e-10, n


def test_rules_single_threaded_and_thread_count_restored() -> None:
    """With several intra-op threads and no rule workers, the conv rules (many small ops) run on RULE_THREADS, the
    Linear-on-vectors rule (one large product) on all the caller's threads, and the caller's count comes back."""
    from kernels import fisher_fast

    torch.manual_seed(0)
    model = ConvNet().double()
    gen = torch.Generator().manual_seed(6)
    data = [(torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 4, (4,), generator=gen))]
    seen: dict[str, list[int]] = {"conv2d_rule": [], "linear_rule": []}

    torch.set_num_threads(2)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, calls in seen.items():
                original = getattr(rules, name)

                def spy(*args: object, original=original, calls=calls) -> bool:  # noqa: ANN001
                    calls.append(torch.get_num_threads())
                    return original(*args)

                mp.setattr(rules, name, spy)
            fast = fisher_diagonal(model, data, rule_workers=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert seen["conv2d_rule"] and set(seen["conv2d_rule"]) == {fisher_fast.RULE_THREADS}
    assert seen["linear_rule"] == [2]
    ref = fisher_diagonal(model, data, backend="reference")
    for n in ref.diag:
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-5, n
