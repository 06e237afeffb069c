"""The exact per-sample Fisher on small timm transformers (issue 19 section 5) and the fixed-cost changes behind it:
the reused scratch buffer of the sequence product, the autograd check of the broadcast rule, the flag restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kernels.fisher_rules as rules
from kernels import fisher_diagonal
from tests.kernels.models import rel_err

torch.set_num_threads(1)


def _transformer(width: int = 16, depth: int = 2, patch: int = 4, dtype: torch.dtype = torch.float64) -> nn.Module:
    """timm ViT blocks (fused attention, GELU MLP, LayerNorm), 16 patch tokens + cls token on 16x16 inputs."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=patch, embed_dim=width, depth=depth,
        num_heads=2, num_classes=5,
    )  # fmt: skip
    with torch.no_grad():  # timm initialises LayerNorm to (1, 0) and biases to 0: make every rule term visible
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
    return model.to(dtype)


def _data(sizes: list[int], dtype: torch.dtype = torch.float64, seed: int = 1) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        out.append((torch.randn(n, 3, 16, 16, generator=gen, dtype=dtype), torch.randint(0, 5, (n,), generator=gen)))
    return out


@pytest.mark.parametrize("sizes", [[5, 4], [1, 6]])  # a first batch of one sample: the broadcast check sees one
def test_two_block_transformer_equals_reference(sizes: list[int]) -> None:
    model = _transformer().eval()
    model.blocks[0].train()  # mixed train/eval flags are restored per module
    data = _data(sizes)
    ref = fisher_diagonal(model, data, backend="reference")
    fast = fisher_diagonal(model, data, backend="fast")
    assert fast.fallback == ()
    assert model.blocks[0].training and model.blocks[0].attn.training and not model.training
    assert not model.blocks[1].training and not model.patch_embed.training
    for name in ref.diag:
        assert ref.diag[name].abs().sum() > 0, name
        assert rel_err(fast.diag[name], ref.diag[name]) < 1e-10, name
    assert rules._SCRATCH.buf is None  # the scratch buffer is released with the call


def test_float32_transformer_within_rounding() -> None:
    """float32 (the bench's precision): every parameter within 2e-6 of the float64 reference."""
    model = _transformer(width=32, dtype=torch.float32)
    data = _data([6, 6], dtype=torch.float32)
    fast = fisher_diagonal(model, data, backend="fast", chunk=None)
    ref = fisher_diagonal(model.double(), [(x.double(), y) for x, y in data], backend="reference")
    assert fast.fallback == ()
    worst = max(rel_err(fast.diag[n].double(), ref.diag[n]) for n in ref.diag)
    assert worst < 2e-6


class _FirstCopy(nn.Module):
    """A leading-dim-1 parameter used through ``p[0]``: batch-expanded, every sample would read row 0 -- the broadcast
    rule's sample-i gradient is then wrong (all samples' gradient on row 0, zero elsewhere); the check must drop it."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.randn(1, 4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(x + self.p[0]))


def test_broadcast_check_rejects_a_coupled_parameter() -> None:
    torch.manual_seed(0)
    model = _FirstCopy().double()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=gen)
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    fast = fisher_diagonal(model, data, backend="fast")
    ref = fisher_diagonal(model, data, backend="reference")
    assert fast.fallback == ("p",)
    for n in ref.diag:
        assert rel_err(fast.diag[n], ref.diag[n]) < 1e-10, n


def test_scratch_is_per_dtype_and_reused() -> None:
    """The sequence product's scratch follows the dtype of its inputs and is reused while large enough."""
    rules.release_scratch()
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(9, 3, 20, generator=gen, dtype=torch.float64)
    x = torch.randn(9, 3, 30, generator=gen, dtype=torch.float64)
    expect = torch.einsum("bto,btk->bok", g, x).square().sum(0)
    assert rel_err(rules.seq_sqsum_torch(g, x, None), expect) < 1e-12
    first = rules._SCRATCH.buf
    assert first is not None and first.dtype == torch.float64
    assert (
        rel_err(rules.seq_sqsum_torch(g[:4], x[:4], 2), torch.einsum("bto,btk->bok", g[:4], x[:4]).square().sum(0))
        < 1e-12
    )
    assert rules._SCRATCH.buf is first  # smaller request: the same buffer
    got = rules.seq_sqsum_torch(g.float(), x.float(), None)
    assert rules._SCRATCH.buf.dtype == torch.float32
    assert rel_err(got.double(), expect) < 1e-5
    rules.release_scratch()
    assert rules._SCRATCH.buf is None


def test_sequence_product_on_two_threads_equals_einsum() -> None:
    """Several intra-op threads take the few-large-ops path (one bmm per chunk), also above SEQ_BLOCK."""
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(5, 3, 600, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 3, 500, generator=gen, dtype=torch.float64)
    assert 600 * 500 > rules.SEQ_BLOCK
    expect = torch.einsum("bto,btk->bok", g, x).square().sum(0)
    torch.set_num_threads(2)
    try:
        got = rules.seq_sqsum_torch(g, x, None)
    finally:
        torch.set_num_threads(1)
        rules.release_scratch()
    assert rel_err(got, expect) < 1e-12


def test_broadcast_verdict_kept_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broadcast check runs on a model's first call only (from a batch of two or more samples, without
    forward_fn); later calls reuse the verdict, passed (timm ViT) or failed (a coupled parameter), and stay exact."""
    import kernels.fisher as fisher

    calls: list[int] = []
    check = fisher._per_sample_autograd
    monkeypatch.setattr(fisher, "_per_sample_autograd", lambda *a: calls.append(1) or check(*a))
    fisher.clear_broadcast_cache()
    vit, coupled = _transformer(), _FirstCopy().double()
    vit_data = _data([1, 4])  # a first batch of one sample: no verdict kept
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (6,), generator=gen)
    coupled_data = [(x[:3], y[:3]), (x[3:], y[3:])]
    for model, data in ((vit, vit_data), (vit, vit_data[::-1]), (coupled, coupled_data)):
        fisher_diagonal(model, data, backend="fast")
    assert len(calls) == 3  # the ViT checked twice (first batch of one sample, then of four), the coupled model once
    for model, data, fallback in ((vit, vit_data, ()), (coupled, coupled_data, ("p",))):
        fast = fisher_diagonal(model, data, backend="fast")
        ref = fisher_diagonal(model, data, backend="reference")
        assert fast.fallback == fallback
        for n in ref.diag:
            assert rel_err(fast.diag[n], ref.diag[n]) < 1e-10, n
    assert len(calls) == 3  # verdicts kept: no further check
    fisher_diagonal(vit, vit_data, backend="fast", forward_fn=vit)  # a forward_fn: checked again
    assert len(calls) == 4
    fisher.clear_broadcast_cache()
    fisher_diagonal(coupled, coupled_data, backend="fast")
    assert len(calls) == 5
