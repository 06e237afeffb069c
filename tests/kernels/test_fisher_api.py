"""fisher_diagonal's contract: modes, sampled labels, selection, state preservation, input validation, laziness."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kernels import FisherResult, fisher_diagonal
from tests.kernels.models import MLP, ConvNet, rel_err

torch.set_num_threads(1)


def _mlp_data(n: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    extra = torch.arange(n)
    return [(x[:3], y[:3], extra[:3]), (x[3:], y[3:], extra[3:])]  # (x, y, *rest) batches of unequal size


def test_batch_mode_is_squared_batch_mean_gradient() -> None:
    torch.manual_seed(0)
    model = MLP().double()
    data = _mlp_data()
    res = fisher_diagonal(model, data, mode="batch")
    assert res.mode == "batch" and res.n_batches == 2 and res.n_samples == 8
    model.eval()
    params = dict(model.named_parameters())
    expect = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y, _ in data:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
        for n, g in zip(params, grads):
            expect[n] += g**2 / 2
    for n in params:
        assert rel_err(res.diag[n], expect[n]) < 1e-12
    exact = fisher_diagonal(model, data)
    assert rel_err(res.diag["fc1.weight"], exact.diag["fc1.weight"]) > 0.1  # a different quantity


def test_sampled_labels_fast_equals_reference_and_differs_from_true() -> None:
    torch.manual_seed(0)
    model = ConvNet().double()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(12, 3, 8, 8, generator=gen, dtype=torch.float64)
    data = [(x[:6], torch.zeros(6, dtype=torch.long)), (x[6:], torch.zeros(6, dtype=torch.long))]
    fast = fisher_diagonal(model, data, labels="sampled", generator=torch.Generator().manual_seed(7))
    ref = fisher_diagonal(
        model, data, labels="sampled", backend="reference", generator=torch.Generator().manual_seed(7)
    )
    true = fisher_diagonal(model, data, labels="true")
    assert fast.labels == "sampled"
    for n in ref.diag:
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-5, n
    assert rel_err(fast.diag["fc.weight"], true.diag["fc.weight"]) > 0.05


def test_sampled_labels_average_to_the_true_fisher() -> None:
    """E_y~p [g g^T]: for the bias of a linear softmax head the exact value is diag(p) - p^2 per sample."""
    torch.manual_seed(0)
    head = torch.nn.Linear(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    data = [(x, torch.zeros(5, dtype=torch.long))] * 400
    res = fisher_diagonal(head, data, labels="sampled", generator=gen)
    p = torch.softmax(head(x), 1).detach()
    exact = (p - p**2).mean(0)
    assert rel_err(res.diag["bias"], exact) < 0.05


def test_state_preserved_and_grads_untouched() -> None:
    torch.manual_seed(0)
    model = ConvNet().double()
    model.train()
    model.bn.eval()  # mixed flags are restored per module
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    model.fc.weight.grad = None
    before = {n: b.clone() for n, b in model.named_buffers()}
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for backend in ("fast", "reference"):
        for mode in ("per_sample", "batch"):
            fisher_diagonal(model, [(x, torch.tensor([0, 1, 2, 3]))], mode=mode, backend=backend)
    assert model.training and model.c1.training and not model.bn.training
    assert model.fc.weight.grad is None
    assert all(p.grad is None or bool((p.grad == 3.0).all()) for p in model.parameters())
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())  # eval mode: running stats untouched


def test_layers_selection_and_forward_fn() -> None:
    torch.manual_seed(0)
    model = MLP().double()
    data = _mlp_data()
    res = fisher_diagonal(model, data, layers=["fc1", "*.bias"])
    assert set(res.diag) == {"fc1.weight", "fc1.bias", "fc2.bias"}
    full = fisher_diagonal(model, data)
    assert rel_err(res.diag["fc1.weight"], full.diag["fc1.weight"]) < 1e-12
    model.fc2.bias.requires_grad_(False)
    assert "fc2.bias" not in fisher_diagonal(model, data).diag

    def masked(x: torch.Tensor) -> torch.Tensor:  # e.g. a method masking the logits of unseen classes
        return model(x).masked_fill(torch.tensor([False, False, True]), -1e9)

    data01 = [(x, y.clamp(max=1), *rest) for x, y, *rest in data]
    m_fast = fisher_diagonal(model, data01, forward_fn=masked)
    m_ref = fisher_diagonal(model, data01, forward_fn=masked, backend="reference")
    assert m_fast.diag["fc2.weight"][2].abs().max() < 1e-12  # masked class row gets no gradient
    assert rel_err(m_fast.diag["fc2.weight"], m_ref.diag["fc2.weight"]) < 1e-10


def test_max_batches_and_dataloader() -> None:
    torch.manual_seed(0)
    model = MLP().double()
    x = torch.randn(10, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    res = fisher_diagonal(model, loader, max_batches=2)
    assert isinstance(res, FisherResult) and res.n_samples == 8 and res.n_batches == 2
    direct = fisher_diagonal(model, [(x[:8], y[:8])])
    assert rel_err(res.diag["fc1.weight"], direct.diag["fc1.weight"]) < 1e-12


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mode": "exact"}, "mode='exact'"),
        ({"labels": "random"}, "labels='random'"),
        ({"backend": "cuda"}, "backend='cuda'"),
        ({"loss": "mse"}, "loss='mse'"),
        ({"chunk": 0}, "chunk=0"),
        ({"max_batches": -1}, "max_batches=-1"),
        ({"layers": ["nope"]}, "layers=['nope']"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        fisher_diagonal(MLP().double(), _mlp_data(), **kwargs)


def test_bad_data() -> None:
    with pytest.raises(ValueError, match="no samples"):
        fisher_diagonal(MLP().double(), [])
    with pytest.raises(ValueError, match=r"\(x, y, \*rest\)"):
        fisher_diagonal(MLP().double(), [torch.randn(2, 5)])


def test_import_is_lazy() -> None:
    code = (
        "import sys, kernels; assert 'torch' not in sys.modules;"
        "import torch; from kernels import fisher_diagonal;"
        "fisher_diagonal(torch.nn.Linear(2, 2), [(torch.randn(3, 2), torch.tensor([0, 1, 1]))]);"
        "assert 'triton' not in sys.modules, 'triton imported on CPU'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
