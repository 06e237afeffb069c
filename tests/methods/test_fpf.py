"""FPF: only the selected modules change (bitwise), module selection, and k-FPF's trigger schedule."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from cl.methods.finetune import Finetune
from cl.methods.k_fpf import batches_per_epoch, trigger_steps
from cl.modules.buffer import ReservoirBuffer
from cl.modules.fpf import FPFOptions, fpf_finetune
from cl.modules.fpf_select import DEFAULT_CNN, method_units, resolve_selection


def _method(vit: bool) -> Finetune:
    from cl.backbones import Backbone

    torch.manual_seed(0)
    if vit:
        bb = Backbone("vit_tiny_patch16_224", in_chans=1, img_size=8, patch_size=4, embed_dim=24, depth=2, num_heads=2)
    else:
        bb = Backbone("resnet18", in_chans=1, cifar_stem=True, channels=[4, 8, 8, 8])
    m = Finetune(bb, num_classes=4, optimizer=partial(torch.optim.SGD, lr=0.1))
    m.seen_classes[:] = True
    return m


def _buffer(shape=(1, 8, 8), n=40) -> ReservoirBuffer:
    buf = ReservoirBuffer(32, shape, num_logits=4, seed=0)
    g = torch.Generator().manual_seed(1)
    buf.add(torch.randn(n, *shape, generator=g), torch.randint(0, 4, (n,), generator=g), 0, torch.randn(n, 4))
    return buf


@pytest.mark.parametrize(
    "vit,modules", [(False, "default"), (False, ["head"]), (True, "default"), (True, ["backbone.model.blocks.1.*"])]
)
def test_fpf_changes_only_selected_parameters(vit, modules):
    method = _method(vit)
    units = resolve_selection(method, modules)
    selected = {n for u in units for n, _ in method_units(method)[u].params}
    owners = set(units)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    result = fpf_finetune(method, _buffer(), units, FPFOptions(iterations=5, lr=0.5, batch_size=8, kd_beta=0.1))
    after = method.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for k in before:
        in_selected = k in selected or any(k.startswith(o + ".") for o in owners)
        if not in_selected:
            assert k not in changed, f"{k} changed but is not selected"
    assert selected and selected <= changed  # every selected parameter moved
    assert result.params_updated == sum(p.numel() for u in units for _, p in method_units(method)[u].params)
    assert result.flops > 0 and result.loss_last == result.loss_last
    # modes and requires_grad restored
    assert all(p.requires_grad for p in method.parameters()) and method.training


def test_default_cnn_selection_is_bn_first_conv_and_head():
    method = _method(False)
    units = method_units(method)
    chosen = resolve_selection(method, "default")
    bns = [n for n, u in units.items() if u.kind == "BatchNorm2d"]
    assert set(chosen) == set(bns) | {"backbone.model.conv1", "head"}
    assert "backbone.model.layer1.0.conv1" not in chosen and DEFAULT_CNN[0] == "type:BatchNorm*"


def test_selection_errors_and_auto():
    method = _method(True)
    with pytest.raises(ValueError, match="matches no module"):
        resolve_selection(method, ["nothing.here"], key="callbacks.fpf.modules")
    with pytest.raises(ValueError, match="allowed"):
        resolve_selection(method, "everything")
    scores = {n: float(i) for i, n in enumerate(method_units(method))}
    top = resolve_selection(method, "auto", scores, top=3)
    assert top == list(scores)[-3:]  # the three highest scores, in module order
    assert "backbone.model.cls_token" in method_units(method)  # container-owned parameters are units


def test_kd_needs_logits():
    method = _method(False)
    buf = ReservoirBuffer(8, (1, 8, 8))
    buf.add(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="kd_beta"):
        fpf_finetune(method, buf, ["head"], FPFOptions(iterations=1, kd_beta=1.0))


def test_schedule_helpers():
    assert trigger_steps(15, 4) == [3, 7, 11, 15]
    assert trigger_steps(10, 10) == list(range(1, 11))
    with pytest.raises(ValueError, match="method.k=11"):
        trigger_steps(10, 11)
    assert batches_per_epoch(270, 32, None) == 9
    assert batches_per_epoch(270, 32, 3) == 3
    assert batches_per_epoch(270, 32, 0.5) == 4
    assert batches_per_epoch(270, 32, None, drop_last=True) == 8


def test_fpf_options_fail_early_with_the_owners_config_key():
    from cl.callbacks.fpf import FPFCallback

    with pytest.raises(ValueError, match=r"callbacks\.fpf\.optimizer='rmsprop'; allowed: \['sgd', 'adam'\]"):
        FPFCallback(optimizer="rmsprop")  # at construction, not after training
    with pytest.raises(ValueError, match=r"callbacks\.fpf\.iterations=-1"):
        FPFCallback(iterations=-1)
    with pytest.raises(ValueError, match=r"method\.fpf_lr=0\.0"):
        FPFOptions(lr=0, prefix="method.fpf_")
    opts = FPFOptions(iterations="3", lr="0.5", batch_size=8.0)  # config strings / floats coerced
    assert (opts.iterations, opts.lr, opts.batch_size) == (3, 0.5, 8) and isinstance(opts.batch_size, int)
    sgd = opts.make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 0.5
