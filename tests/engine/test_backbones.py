"""The timm backbone wrapper: views it exposes, local weights, reduced ResNet-18, offline errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cl.backbones import Backbone, BackboneWeightsError

TINY = dict(name="vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, in_chans=1)


def test_vit_views_agree():
    torch.manual_seed(0)
    b = Backbone(**TINY).eval()
    x = torch.randn(2, 1, 16, 16)
    tokens = b.tokens(x)
    assert tokens.shape == (2, 17, 32) and len(b.blocks) == 2 and b.num_features == 32
    assert torch.allclose(b.pool(tokens), b(x))


def test_weights_from_a_local_file_are_loaded(tmp_path):
    torch.manual_seed(1)
    src = Backbone(**TINY)
    torch.save(src.model.state_dict(), tmp_path / "vit.pth")
    torch.manual_seed(2)
    loaded = Backbone(**TINY, weights=str(tmp_path / "vit.pth"))
    for (k, a), (_, c) in zip(src.model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, c), k
    torch.manual_seed(2)
    fresh = Backbone(**TINY)
    assert not torch.equal(fresh.model.pos_embed, loaded.model.pos_embed)


def test_missing_weights_file_names_the_key(tmp_path):
    with pytest.raises(BackboneWeightsError, match=r"backbone.weights=.*no such file"):
        Backbone(**TINY, weights=str(tmp_path / "missing.safetensors"))


def test_pretrained_without_cache_offline_explains(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BackboneWeightsError, match=r"not in the Hugging Face cache"):
        Backbone(**{**TINY, "depth": 1}, pretrained=True)


def test_reduced_resnet18_for_32px():
    b = Backbone(name="resnet18", cifar_stem=True, channels=[20, 40, 80, 160], in_chans=3)
    assert isinstance(b.model.maxpool, nn.Identity) and b.model.conv1.stride == (1, 1)
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 160)
    with pytest.raises(TypeError, match="needs a ViT"):
        b.tokens(torch.randn(1, 3, 32, 32))


def test_wrap_attention_replaces_only_chosen_blocks():
    b = Backbone(**TINY)
    b.wrap_attention([1], lambda i, attn: nn.Sequential(attn))
    assert isinstance(b.blocks[1].attn, nn.Sequential) and not isinstance(b.blocks[0].attn, nn.Sequential)
    with pytest.raises(ValueError, match=r"prompt layer 5 out of range"):
        b.wrap_attention([5], lambda i, attn: attn)


def test_an_npz_checkpoint_goes_to_timms_npz_loader(tmp_path, monkeypatch):
    """An original AugReg .npz (vit_b16.yaml's checkpoint as released) is read by the ViT's own npz loader, not as a
    torch state dict (timm resets custom_load when a file is given)."""
    from timm.models.vision_transformer import VisionTransformer

    calls = []
    monkeypatch.setattr(VisionTransformer, "load_pretrained", lambda self, path, prefix="": calls.append(path))
    (tmp_path / "B_16.npz").write_bytes(b"")
    Backbone(**TINY, weights=str(tmp_path / "B_16.npz"))
    assert calls == [str(tmp_path / "B_16.npz")]
