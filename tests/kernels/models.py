"""Small random models for the Fisher tests (one per layer type, plus the project's backbones shrunk)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TokenNet(nn.Module):
    """Embedding -> cls token (broadcast parameter) -> LayerNorm -> token Linear (called twice) -> RMSNorm -> head."""

    def __init__(self, vocab: int = 11, dim: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.rms = nn.RMSNorm(dim)
        self.scale = nn.Parameter(torch.rand(dim) + 0.5)  # direct parameter of the root: module-level vjp
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.emb(x)], dim=1)
        h = torch.tanh(self.fc(self.ln(h)))
        h = self.fc(h)  # same Linear twice: per-sample gradients summed over calls before squaring
        return self.head(self.rms(h).mean(1) * self.scale)


class ConvNet(nn.Module):
    """Conv2d (padding modes, stride, groups, dilation) with BatchNorm (running stats), GroupNorm, in-place ReLU."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect")
        self.c3 = nn.Conv2d(6, 6, 2, dilation=2, padding="same", bias=False)
        self.gn = nn.GroupNorm(3, 6)
        self.fc = nn.Linear(6 * 4 * 4, classes)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.c1(x))
        h.relu_()
        h = self.gn(self.c3(self.c2(h)))
        h += 0.1  # in-place on a captured output
        return self.fc(h.flatten(1))


class Odd(nn.Module):
    """A module of unknown type (module-level vjp) and an MLP whose Linear outputs feed an in-place op."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.w + x.pow(2) * self.w.flip(0)


class MLP(nn.Module):
    def __init__(self, d: int = 5, h: int = 7, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, classes)
        self.odd = Odd()

    def forward(self, x: Tensor) -> Tensor:
        h = self.odd(x)
        h.add_(0.5)  # in-place on the output of the first module: its capture is cloned on a retry
        return self.fc2(torch.relu(self.fc1(h)))


class AttnNet(nn.Module):
    """nn.MultiheadAttention: its out_proj.forward never runs (weights used functionally) -> reference fallback."""

    def __init__(self, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


class Tied(nn.Module):
    """Embedding tied to the output layer: one parameter in two modules -> reference fallback."""

    def __init__(self, vocab: int = 6, dim: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.emb(x).mean(1))


def tiny_vit(classes: int = 10) -> nn.Module:
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2,
        num_classes=classes,
    )  # fmt: skip


def tiny_resnet(classes: int = 10) -> nn.Module:
    """timm resnet18 reduced for small images (3x3 stride-1 stem, no max-pool), random BatchNorm statistics."""
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=classes)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
