"""The light FLOP counter gives the totals of torch's FlopCounterMode on ViT and ResNet training steps."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cl.analysis.flops import LightFlopCounter, count_flops


@pytest.mark.parametrize("vit", [True, False])
def test_light_counter_matches_flop_counter_mode(vit):
    from cl.backbones import Backbone

    if vit:
        bb = Backbone("vit_tiny_patch16_224", in_chans=1, img_size=8, patch_size=4, embed_dim=24, depth=2, num_heads=2)
    else:
        bb = Backbone("resnet18", in_chans=1, cifar_stem=True, channels=[4, 8, 8, 8])
    x = torch.randn(4, 1, 8, 8)

    def step():
        bb(x).square().sum().backward()

    with FlopCounterMode(display=False) as ref:
        step()
    _, light = count_flops(step)
    assert light == ref.get_total_flops() > 0


def test_linear_forward_backward_by_hand():
    lin = torch.nn.Linear(10, 20, bias=False)
    x = torch.randn(4, 10, requires_grad=True)
    with LightFlopCounter() as c:
        lin(x).sum().backward()
    # forward 2*4*10*20, backward: grad wrt input and wrt weight, each the same
    assert c.total == 3 * 2 * 4 * 10 * 20
