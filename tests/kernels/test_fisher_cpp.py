"""The fused C++ passes of the Fisher's rules (``kernels.fisher_cpp``): the sequence product equal to the per-sample
einsum for every tile shape (rows and columns that fill no register tile, one token, one sample, strided inputs), adds
into the accumulator, and is what the fast backend runs on CPU; the norm rule and the per-sample Conv2d rule equal
per-sample autograd / torch.func and the torch rules (stride, padding modes, dilation, groups, bias, batch 1); without
a compiler one warning and the torch forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kernels import fisher_cpp, fisher_diagonal
from kernels.fisher import _sqsum_kernels
from kernels.fisher_rules import SqOps, batchnorm_rule, conv2d_rule, seq_sqsum_torch, vec_sqsum_torch
from tests.kernels.models import ConvNet, rel_err

needs_cpp = pytest.mark.skipif(not fisher_cpp.available(), reason="the C++ kernel did not build here")


def _expect(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bto,btk->bok", g.double(), x.double()).square().sum(0)


@needs_cpp
@pytest.mark.parametrize(
    "shape",  # (B, T, O, K): O over and under one 48-row block / 6- and 12-row tiles, K with a scalar remainder
    [(3, 5, 7, 9), (4, 17, 50, 33), (1, 1, 12, 32), (2, 3, 97, 64), (5, 2, 13, 100), (64, 17, 64, 48)],
)
def test_equals_per_sample_einsum_float64(shape: tuple[int, int, int, int]) -> None:
    b, t, o, k = shape
    gen = torch.Generator().manual_seed(sum(shape))
    g = torch.randn(b, t, o, generator=gen, dtype=torch.float64)
    x = torch.randn(b, t, k, generator=gen, dtype=torch.float64)
    out = torch.full((o, k), 2.0, dtype=torch.float64)
    got = fisher_cpp.seq_sqsum(g, x, None, out)
    assert got is out  # added in place
    assert rel_err(out - 2.0, _expect(g, x)) < 1e-13
    assert rel_err(fisher_cpp.seq_sqsum(g, x), _expect(g, x)) < 1e-13  # a fresh result without out


@needs_cpp
def test_strided_inputs_and_float32() -> None:
    """Transposed views (the conv rule passes (B, L, C k k) views of unfolded patches) and float32 within rounding."""
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(6, 40, 17, generator=gen).transpose(1, 2)  # (6, 17, 40), not contiguous
    x = torch.randn(6, 70, 17, generator=gen).transpose(1, 2)  # (6, 17, 70)
    assert not g.is_contiguous() and not x.is_contiguous()
    assert rel_err(fisher_cpp.seq_sqsum(g, x, None, torch.zeros(40, 70)).double(), _expect(g, x)) < 2e-6


def test_tensors_it_does_not_take_go_to_the_torch_form() -> None:
    """A float64 product into a float32 accumulator, a strided accumulator, half precision: the torch form's result."""
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(3, 4, 10, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 4, 20, generator=gen, dtype=torch.float64)
    out32 = torch.ones(10, 20)
    fisher_cpp.seq_sqsum(g, x, None, out32)
    assert rel_err(out32.double(), _expect(g, x) + 1) < 1e-6
    strided = torch.zeros(20, 10, dtype=torch.float64).t()
    fisher_cpp.seq_sqsum(g, x, None, strided)
    assert rel_err(strided, _expect(g, x)) < 1e-13
    half = fisher_cpp.seq_sqsum(g.bfloat16(), x.bfloat16(), None, torch.zeros(10, 20, dtype=torch.bfloat16))
    assert torch.equal(half, seq_sqsum_torch(g.bfloat16(), x.bfloat16(), None))


@needs_cpp
def test_fast_backend_uses_it_on_cpu() -> None:
    seq, _ = _sqsum_kernels("fast", torch.device("cpu"))
    assert seq is fisher_cpp.seq_sqsum
    assert _sqsum_kernels("reference", torch.device("cpu"))[0] is seq_sqsum_torch


@needs_cpp
@pytest.mark.parametrize("select", ["both", "weight", "bias"])
def test_linear_rule_with_bias_in_one_call(select: str) -> None:
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(5, 9, 30, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 9, 20, generator=gen, dtype=torch.float64)
    w = torch.zeros(30, 20, dtype=torch.float64) if select != "bias" else None
    b = torch.zeros(30, dtype=torch.float64) if select != "weight" else None
    assert fisher_cpp.linear(g, x, w, b)
    if w is not None:
        assert rel_err(w, _expect(g, x)) < 1e-13
    if b is not None:
        assert rel_err(b, g.sum(1).square().sum(0)) < 1e-13
    assert not fisher_cpp.linear(g, x, torch.zeros(20, 30, dtype=torch.float64), None)  # wrong shape: not taken


@needs_cpp
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("shape", [(4, 7, 33), (6, 50), (3, 2, 5, 16)])  # tokens, vectors, two token dims
def test_norm_rule_equals_per_sample_autograd(rms: bool, shape: tuple[int, ...]) -> None:
    """sum_i (dl_i/dw)^2 and (dl_i/db)^2 of a norm layer for l_i = <g_i, norm(x_i)>, by autograd per sample."""
    gen = torch.Generator().manual_seed(8)
    c = shape[-1]
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 1
    g = torch.randn(*shape, generator=gen, dtype=torch.float64)
    layer = (torch.nn.RMSNorm(c, eps=1e-3) if rms else torch.nn.LayerNorm(c, eps=1e-3)).double()
    expect = {n: torch.zeros_like(p) for n, p in layer.named_parameters()}
    for i in range(shape[0]):
        grads = torch.autograd.grad((layer(x[i : i + 1]) * g[i : i + 1]).sum(), list(layer.parameters()))
        for n, gr in zip(expect, grads):
            expect[n] += gr.square()
    w, b = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    assert fisher_cpp.norm(x, g, w, None if rms else b, 1e-3, rms)
    assert rel_err(w, expect["weight"]) < 1e-12
    if not rms:
        assert rel_err(b, expect["bias"]) < 1e-12


def _conv_reference(mod: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """sum_i (d <g_i, conv(x_i)> / d theta)^2 from torch.func per-sample gradients (float64)."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in mod.named_parameters()}

    def inner(p: dict, xi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        return (functional_call(mod, p, (xi.unsqueeze(0),)) * gi.unsqueeze(0)).sum()

    return {n: v.square().sum(0) for n, v in vmap(grad(inner), in_dims=(None, 0, 0))(params, x, g).items()}


CONVS = {  # (B, C_in, H, W), Conv2d keyword arguments
    "stride2_pad1_bias": ((5, 3, 9, 11), dict(out_channels=7, kernel_size=3, stride=2, padding=1)),
    "batch1_no_bias": ((1, 4, 12, 12), dict(out_channels=20, kernel_size=3, padding=1, bias=False)),
    "odd_groups_dilation": (
        (3, 6, 10, 9),
        dict(out_channels=9, kernel_size=(3, 2), stride=(2, 1), padding=(2, 0), dilation=(1, 2), groups=3),
    ),
    "depthwise_small": ((4, 8, 7, 7), dict(out_channels=8, kernel_size=3, padding=1, groups=8)),
    "reflect": ((2, 3, 6, 6), dict(out_channels=5, kernel_size=3, padding=2, padding_mode="reflect")),
    "same_circular_groups": (
        (3, 4, 13, 13),
        dict(out_channels=6, kernel_size=5, padding="same", dilation=2, groups=2, padding_mode="circular", bias=False),
    ),
    "wide_1x1_stride2": ((7, 20, 9, 9), dict(out_channels=40, kernel_size=1, stride=2, bias=False)),
    "cnn_small_second": ((3, 32, 8, 8), dict(out_channels=64, kernel_size=3, padding=1, bias=False)),
    # few patch rows (K <= L / 4, stride 1 along x, whole vectors per row): the kernel's vectors-along-x form, with
    # channel and row counts that fill no tile, groups, dilation, a vertical stride, 1x1
    "small_k_bias": ((3, 2, 16, 16), dict(out_channels=7, kernel_size=3, padding=1)),
    "small_k_groups_dilation": ((2, 4, 12, 16), dict(out_channels=6, kernel_size=3, padding=2, dilation=2, groups=2)),
    "small_k_stride_2_1": ((2, 2, 12, 8), dict(out_channels=5, kernel_size=(1, 3), stride=(2, 1), padding=(0, 1))),
    "small_k_1x1": ((3, 10, 8, 8), dict(out_channels=5, kernel_size=1, bias=False)),
    "depthwise_16x16": ((2, 4, 16, 16), dict(out_channels=4, kernel_size=3, padding=1, groups=4)),
}


@needs_cpp
@pytest.mark.parametrize("name", list(CONVS))
def test_conv_rule_equals_torch_rule_and_per_sample_reference(name: str) -> None:
    shape, kw = CONVS[name]
    gen = torch.Generator().manual_seed(len(name))
    torch.manual_seed(len(name))
    mod = nn.Conv2d(shape[1], **kw).double()
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    g = torch.randn(mod(x).shape, generator=gen, dtype=torch.float64)
    expect = _conv_reference(mod, x, g)
    fused = {n: torch.full_like(p, 0.5) for n, p in mod.named_parameters()}  # adds into the accumulators
    assert fisher_cpp.conv(mod, [x], [g], fused["weight"], fused.get("bias"))
    plain = {n: torch.zeros_like(p) for n, p in mod.named_parameters()}
    assert conv2d_rule(mod, [x], [g], plain, SqOps(seq_sqsum_torch, vec_sqsum_torch))
    for n, e in expect.items():
        assert rel_err(fused[n] - 0.5, e) < 1e-10, n
        assert rel_err(fused[n] - 0.5, plain[n]) < 1e-10, n
    threads = torch.get_num_threads()
    try:  # samples split over 3 intra-op threads: each thread's accumulator added once
        torch.set_num_threads(3)
        split = {n: torch.zeros_like(p) for n, p in mod.named_parameters()}
        assert fisher_cpp.conv(mod, [x], [g], split["weight"], split.get("bias"))
    finally:
        torch.set_num_threads(threads)
    for n, e in expect.items():
        assert rel_err(split[n], e) < 1e-10, n


@needs_cpp
def test_conv_rule_selection_float32_and_what_it_leaves_to_torch() -> None:
    """Weight or bias alone; float32 within rounding; two calls, depthwise at >= 256 positions not along x and misshapen
    accumulators are not taken (nothing added) and the rule then gives the torch form's result."""
    gen = torch.Generator().manual_seed(11)
    mod = nn.Conv2d(5, 12, 3, padding=1).double()
    x = torch.randn(6, 5, 7, 7, generator=gen, dtype=torch.float64)
    g = torch.randn(6, 12, 7, 7, generator=gen, dtype=torch.float64)
    expect = _conv_reference(mod, x, g)
    w, b = torch.zeros_like(mod.weight), torch.zeros_like(mod.bias)
    assert fisher_cpp.conv(mod, [x], [g], w, None) and fisher_cpp.conv(mod, [x], [g], None, b)
    assert rel_err(w, expect["weight"]) < 1e-12 and rel_err(b, expect["bias"]) < 1e-12
    w32 = torch.zeros(mod.weight.shape)
    assert fisher_cpp.conv(mod.float(), [x.float()], [g.float()], w32, None)
    assert rel_err(w32.double(), expect["weight"]) < 1e-5
    mod.double()
    assert not fisher_cpp.conv(mod, [x, x], [g, g], w, None)
    assert not fisher_cpp.conv(mod, [x], [g], torch.zeros(12, 45, dtype=torch.float64), None)
    dw = nn.Conv2d(4, 4, 3, padding=1, groups=4).double()  # 18 x 18 = 324 positions, rows of 18: not along x
    xd = torch.randn(2, 4, 18, 18, generator=gen, dtype=torch.float64)
    assert not fisher_cpp.conv(dw, [xd], [torch.ones(2, 4, 18, 18, dtype=torch.float64)], None, None)
    acc = {"weight": torch.zeros_like(mod.weight)}  # two calls through the rule: summed per sample, then squared
    assert conv2d_rule(mod, [x, x], [g, g], acc, SqOps(fisher_cpp.seq_sqsum, vec_sqsum_torch, None, fisher_cpp))
    assert rel_err(acc["weight"], 4 * expect["weight"]) < 1e-12


@needs_cpp
def test_fast_backend_runs_the_conv_rule_in_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = fisher_cpp.conv

    def counted(mod: nn.Conv2d, *args: object) -> bool:
        taken = real(mod, *args)
        calls.append(taken)
        return taken

    monkeypatch.setattr(fisher_cpp, "conv", counted)
    torch.manual_seed(3)
    model = ConvNet().double().eval()
    data = [(torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (5,)))]
    fast = fisher_diagonal(model, data, mode="per_sample", backend="fast", rule_workers=0)
    ref = fisher_diagonal(model, data, mode="per_sample", backend="reference")
    assert calls == [True, True, True]  # c3, c2 (reflect), c1
    for n, v in ref.diag.items():
        assert rel_err(fast.diag[n], v) < 1e-10, n


def test_without_a_compiler_one_warning_and_the_torch_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.cpp_extension as ext

    def no_compiler(*_a: object, **_k: object) -> None:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fisher_cpp, "_BUILD", {})
    monkeypatch.setattr(ext, "load", no_compiler)
    torch.manual_seed(4)
    model = ConvNet().double().eval()
    data = [(torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (4,)))]
    with pytest.warns(UserWarning, match="did not build"):
        fast = fisher_diagonal(model, data, mode="per_sample", backend="fast")
    assert _sqsum_kernels("fast", torch.device("cpu"))[0] is seq_sqsum_torch  # decided once: no second warning
    ref = fisher_diagonal(model, data, mode="per_sample", backend="reference")
    for n, v in ref.diag.items():
        assert rel_err(fast.diag[n], v) < 1e-10, n


@needs_cpp
@pytest.mark.parametrize("shape", [(5, 3), (4, 6, 7), (1, 5, 3, 5), (3, 4, 9, 9)])  # BatchNorm1d / 2d, batch 1
def test_batchnorm_rule_equals_per_sample_autograd_and_torch_rule(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    c = shape[1]
    bn = (nn.BatchNorm1d(c) if len(shape) < 4 else nn.BatchNorm2d(c)).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1, generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    g = torch.randn(*shape, generator=gen, dtype=torch.float64)
    expect = {n: torch.zeros_like(p) for n, p in bn.named_parameters()}
    for i in range(shape[0]):
        for n, gr in zip(expect, torch.autograd.grad((bn(x[i : i + 1]) * g[i : i + 1]).sum(), list(bn.parameters()))):
            expect[n] += gr.square()
    fused = {n: torch.zeros_like(p) for n, p in bn.named_parameters()}
    plain = {n: torch.zeros_like(p) for n, p in bn.named_parameters()}
    assert batchnorm_rule(bn, [x], [g], fused, SqOps(fisher_cpp.seq_sqsum, vec_sqsum_torch, None, fisher_cpp))
    assert batchnorm_rule(bn, [x], [g], plain, SqOps(seq_sqsum_torch, vec_sqsum_torch))
    for n, e in expect.items():
        assert rel_err(fused[n], e) < 1e-12 and rel_err(fused[n], plain[n]) < 1e-12, n
    inv = torch.rsqrt(bn.running_var + bn.eps)
    w = torch.zeros(c, dtype=torch.float64)
    assert fisher_cpp.batchnorm([x], [g], bn.running_mean, inv, w, None)  # weight alone
    assert rel_err(w, expect["weight"]) < 1e-12
    assert not fisher_cpp.batchnorm([x, x], [g, g], bn.running_mean, inv, w, None)  # two calls: the torch rule
    assert not fisher_cpp.batchnorm([x.float()], [g.float()], bn.running_mean, inv, None, None)  # mixed dtypes
