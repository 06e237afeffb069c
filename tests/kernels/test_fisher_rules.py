"""Fast per-layer Fisher rules against the torch.func reference (float64), and the reference against a plain loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels import fisher_diagonal
from tests.kernels.models import MLP, AttnNet, ConvNet, Odd, Tied, TokenNet, rel_err, tiny_resnet, tiny_vit

torch.set_num_threads(1)


def _data(model_kind: str, n: int, classes: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if model_kind == "tokens":
        x = torch.randint(0, 11, (n, 5), generator=gen)
        x[0, :2] = 0  # padding rows
        x[1, :] = 3  # repeated index within one sample
    elif model_kind == "image8":
        x = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64)
    elif model_kind == "image16":
        x = torch.randn(n, 3, 16, 16, generator=gen, dtype=torch.float64)
    elif model_kind == "seq4":
        x = torch.randn(n, 3, 4, generator=gen, dtype=torch.float64)
    else:
        x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    half = n // 2
    return [(x[:half], y[:half]), (x[half:], y[half:])]


CASES = {
    "linear_layernorm_rmsnorm_embedding_broadcast": (TokenNet, "tokens", 4),
    "conv2d_batchnorm_groupnorm": (ConvNet, "image8", 4),
    "linear_vectors_module_vjp": (MLP, "vec", 3),
    "multihead_attention_fallback": (AttnNet, "seq4", 3),
    "tied_weights_fallback": (Tied, "tokens6", 6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_equals_reference(case: str) -> None:
    cls, kind, classes = CASES[case]
    torch.manual_seed(0)
    model = cls().double()
    gen = torch.Generator().manual_seed(1)
    data = _data(kind, 7, classes, gen) if kind != "tokens6" else _tied_data(gen)
    ref = fisher_diagonal(model, data, backend="reference")
    fast = fisher_diagonal(model, data, backend="fast")
    assert ref.n_samples == fast.n_samples == 7
    assert set(ref.diag) == set(fast.diag) == {n for n, _ in model.named_parameters()}
    expected_fallback = {
        "multihead_attention_fallback": ("attn.in_proj_bias", "attn.in_proj_weight", "attn.out_proj.bias",
                                         "attn.out_proj.weight"),
        "tied_weights_fallback": ("emb.weight",),
    }.get(case, ())  # fmt: skip
    assert fast.fallback == expected_fallback
    for name in ref.diag:
        assert ref.diag[name].shape == dict(model.named_parameters())[name].shape
        assert ref.diag[name].abs().sum() > 0, name
        assert rel_err(fast.diag[name], ref.diag[name]) < 1e-5, name


def _tied_data(gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randint(0, 6, (7, 3), generator=gen)
    y = torch.randint(0, 6, (7,), generator=gen)
    return [(x[:3], y[:3]), (x[3:], y[3:])]


def test_reference_equals_plain_loop() -> None:
    """The reference itself: (1/N) sum_i (autograd grad of sample i's loss)^2, one sample at a time."""
    torch.manual_seed(0)
    model = TokenNet().double().eval()
    gen = torch.Generator().manual_seed(2)
    data = _data("tokens", 6, 4, gen)
    ref = fisher_diagonal(model, data, backend="reference", chunk=4)
    params = dict(model.named_parameters())
    loop = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in data:
        for i in range(x.shape[0]):
            grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), list(params.values()))
            for n, g in zip(params, grads):
                loop[n] += g**2 / 6
    for n in params:
        assert rel_err(ref.diag[n], loop[n]) < 1e-10, n


@pytest.mark.parametrize("factory", [tiny_vit, tiny_resnet])
def test_project_backbones(factory) -> None:  # noqa: ANN001
    """timm ViT (patch-embed conv, cls_token / pos_embed broadcast rule) and reduced ResNet-18 (BatchNorm, in-place)."""
    torch.manual_seed(0)
    model = factory().double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 16, 16, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (3,), generator=gen)
    layers = ["conv1", "bn1", "layer1.0", "layer4.1", "fc"] if factory is tiny_resnet else None  # keep it fast
    data = [(x[:2], y[:2]), (x[2:], y[2:])]  # two batches: the probes run before the first one only
    ref = fisher_diagonal(model, data, backend="reference", layers=layers)
    fast = fisher_diagonal(model, data, backend="fast", chunk=2, layers=layers)
    assert fast.fallback == ()  # every parameter of these backbones has an exact fast rule
    worst = max(rel_err(fast.diag[n], ref.diag[n]) for n in ref.diag)
    assert worst < 1e-5


def test_chunk_does_not_change_result() -> None:
    torch.manual_seed(0)
    model = ConvNet().double()
    data = _data("image8", 6, 4, torch.Generator().manual_seed(4))
    a = fisher_diagonal(model, data, chunk=1)
    b = fisher_diagonal(model, data, chunk=64)
    for n in a.diag:
        assert rel_err(a.diag[n], b.diag[n]) < 1e-12


def test_unused_module_gets_zero() -> None:
    """A module whose output does not reach the loss has zero Fisher (not a fallback, not an error)."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.Linear(3, 2)
            self.odd = Odd()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)
            return self.used(x)

    model = Branchy().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    res = fisher_diagonal(model, [(x, torch.tensor([0, 1, 1, 0]))])
    assert res.diag["unused.weight"].abs().max() == 0
    assert res.diag["used.weight"].abs().max() > 0
    assert res.diag["odd.w"].abs().max() == 0  # never called


def test_layers_not_depending_on_x() -> None:
    """A Linear on a parameter (unbatched: reference fallback) and on a batch-expanded parameter (independent of x: in
    the frozen drive its output becomes a leaf driver, like the first layer's)."""

    class QueryNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Parameter(torch.randn(2, 4))
            self.table = nn.Linear(4, 4)
            self.proj = nn.Linear(4, 4)
            self.inp = nn.Linear(5, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            keys = self.table(self.q)  # (2, 4): no batch dimension
            prompts = self.proj(self.q.unsqueeze(0).expand(x.shape[0], -1, -1))  # batched, independent of x
            h = self.inp(x).unsqueeze(1) * prompts + keys
            return self.head(torch.tanh(h).mean(1))

    torch.manual_seed(0)
    model = QueryNet().double()
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=gen)
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    ref = fisher_diagonal(model, data, backend="reference")
    fast = fisher_diagonal(model, data, backend="fast")
    assert fast.fallback == ("table.bias", "table.weight")
    for n in ref.diag:
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-5, n
