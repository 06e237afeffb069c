"""The Fisher diagonal is a constant of the model: no result carries an autograd graph back to the parameters.

Regression of issue 20: EWC crashed in its second experience on the letters-pretrained ViT with "derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented". In float32 the fast backend's one-time
check of the broadcast rule (``cls_token``, ``pos_embed``) rejected it on elements near zero, those parameters went to
the torch.func reference, whose per-sample gradients carried an outer graph through the other (still trainable)
parameters; EWC's penalty then back-propagated through that graph, i.e. through attention's backward.
"""

from __future__ import annotations

import torch

from kernels import fisher_diagonal
from kernels.fisher_reference import per_sample_sqsum
from tests.kernels.models import tiny_vit


def _vit_and_data(seed: int = 0) -> tuple[torch.nn.Module, list]:
    torch.manual_seed(seed)
    model = tiny_vit()  # float32, timm's fused attention (F.scaled_dot_product_attention)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(6, 3, 16, 16, generator=gen)
    y = torch.randint(0, 10, (6,), generator=gen)
    return model, [(x, y)]


def test_reference_subset_has_no_graph_and_a_penalty_backpropagates() -> None:
    """Per-sample gradients of some parameters while the others require grad: a constant, usable in a penalty."""
    model, data = _vit_and_data()
    x, y = data[0]
    names = ["cls_token", "pos_embed"]
    out = per_sample_sqsum(model, None, x, y, names)
    assert all(not v.requires_grad and v.grad_fn is None for v in out.values())
    params = dict(model.named_parameters())
    penalty = sum((out[n] * (params[n] - 1.0).pow(2)).sum() for n in names) + model(x).sum()
    penalty.backward()  # raised "derivative for ..._flash_attention_..._backward is not implemented" before the fix
    assert params["blocks.0.attn.qkv.weight"].grad is not None


def test_fast_float32_vit_keeps_broadcast_rule_and_matches_reference() -> None:
    """The broadcast check tolerates float32 rounding (scaled to the tensor) and the values equal the reference."""
    model, data = _vit_and_data(seed=3)
    fast = fisher_diagonal(model, data, backend="fast")
    ref = fisher_diagonal(model, data, backend="reference")
    assert fast.fallback == ()
    for name, value in fast.diag.items():
        assert value.grad_fn is None and ref.diag[name].grad_fn is None
        scale = float(ref.diag[name].abs().max())
        assert torch.allclose(value, ref.diag[name], rtol=1e-3, atol=1e-4 * scale + 1e-12), name
