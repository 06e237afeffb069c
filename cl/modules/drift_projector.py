"""Cascaded feature drift compensation (CFDC) of GCAB-CFDC (Cotogni et al., arXiv 2211.12292; reference code
github OcraM17/GCAB-CFDC, ``main.py`` (projector), ``continual/engine_GCAB.py`` (loss), ``continual/GCAB.py``
``forward_features`` (cascade)).

``P_{t-1}``, trained during experience t, maps the current trunk's patch tokens back to those of the trunk frozen at
the end of experience t-1: ``Linear(D, D) -> LayerNorm -> ReLU -> Linear(D, D)`` applied token-wise (the reference's
1x1 convolutions). Its LayerNorm is, by default, over the D features of each token (``norm="token"``), so any token
count works; ``norm="sample"`` is the reference's ``LayerNorm((D, 1, N))``, which normalises all N*D values of a sample
together with an (N, D) affine and needs the token count N fixed.

At inference task token ``c`` of ``T`` sees ``P_c(P_{c+1}(... P_{T-2}(F) ...))`` -- the reference applies
``projectors[T-2], ..., projectors[c]`` in that order -- and the newest token the raw features (:func:`cascade`).
"""

from __future__ import annotations

from torch import Tensor, nn

NORMS = ("token", "sample")


class DriftProjector(nn.Module):
    """Token-wise ``Linear -> LayerNorm -> ReLU -> Linear`` over (B, N, D) tokens."""

    def __init__(self, dim: int, norm: str = "token", num_tokens: int | None = None) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"method.projector_norm={norm!r}; allowed: {list(NORMS)}")
        if norm == "sample" and not num_tokens:
            raise ValueError(
                "method.projector_norm='sample' (the reference's LayerNorm((D, 1, N))) needs the token count"
            )
        self.fc1 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim) if norm == "token" else nn.LayerNorm((int(num_tokens), dim))
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))


def cascade(features: Tensor, projectors: nn.ModuleList, num_tokens: int) -> list[Tensor]:
    """Inputs of the ``num_tokens`` task tokens: entry ``c`` is ``P_c o ... o P_{T-2}(features)`` (``T`` =
    ``num_tokens``), the last entry ``features`` itself. Each projector is applied once (the chain is shared)."""
    out = [features]
    y = features
    for c in range(num_tokens - 2, -1, -1):
        y = projectors[c](y)
        out.append(y)
    return out[::-1]
