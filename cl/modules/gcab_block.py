"""GCAB's shared class-attention block with HAT gates (Cotogni et al., arXiv 2211.12292; reference code
github OcraM17/GCAB-CFDC, ``continual/convit.py`` ``Block.forward`` / ``ClassAttention.forward``).

CaiT/DyTox class-attention (only the task token is a query; Touvron et al. 2021, arXiv 2103.17239), built from timm's
CaiT pieces (``timm.models.cait.ClassAttn`` holds q, k, v, proj; ``timm.layers.Mlp``), with the GCAB gates of task
token ``c`` (``m0`` over the D channels, ``m2`` over the MLP's hidden units)::

    cls <- cls + DropPath(GCA(LN1(cls), LN1(x); m0))                       (kernels.gated_class_attention)
    cls <- cls + DropPath(m0 * fc2(m2 * GELU(fc1(m0 * LN2(cls)))))

All T task tokens go through the block in one call; ``x`` is shared (training) or one sequence per token (CFDC's
cascade at inference). Initialisation as the reference (and timm's ViTs): truncated normal std 0.02 for the Linear
weights, zero biases. The weights that HAT's gradient mask covers, with their (output, input) gates, are listed by
:meth:`GatedClassAttentionBlock.gated_parameters`.
"""

from __future__ import annotations

from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.cait import ClassAttn
from torch import Tensor, nn

from kernels.gated_attention import gated_class_attention


class GatedClassAttentionBlock(nn.Module):
    """One class-attention block shared by all task tokens; see the module docstring."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path: float = 0.0,
        kernel_backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"method.num_heads={num_heads} does not divide the feature dimension {dim}")
        self.num_heads = num_heads
        self.hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttn(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=self.hidden, act_layer=nn.GELU)
        self.kernel_backend = kernel_backend
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def gated_parameters(self) -> list[tuple[nn.Parameter, str, str | None]]:
        """``(parameter, output gate, input gate)`` for every weight/bias under HAT's gradient mask (gate names
        ``m0``/``m2``; ``None`` for a bias)."""
        a, mlp = self.attn, self.mlp
        out: list[tuple[nn.Parameter, str, str | None]] = []
        for lin in (a.q, a.k, a.v, a.proj):
            out.append((lin.weight, "m0", "m0"))
            if lin.bias is not None:
                out.append((lin.bias, "m0", None))
        out += [(mlp.fc1.weight, "m2", "m0"), (mlp.fc1.bias, "m2", None)]
        out += [(mlp.fc2.weight, "m0", "m2"), (mlp.fc2.bias, "m0", None)]
        return out

    def _drop_path(self, y: Tensor) -> Tensor:
        """Stochastic depth drawn independently per (sample, task token), as the reference's per-token calls."""
        if isinstance(self.drop_path, nn.Identity) or not self.training:
            return y
        b, t, d = y.shape
        return self.drop_path(y.transpose(0, 1).reshape(t * b, 1, d)).reshape(t, b, d).transpose(0, 1)

    def forward(self, tokens: Tensor, x: Tensor, m0: Tensor, m2: Tensor) -> Tensor:
        """``tokens`` (B, T, D) task tokens, ``x`` (B, N, D) or (T, B, N, D) patch tokens, gates ``m0`` (T, D) and
        ``m2`` (T, hidden); returns the updated task tokens (B, T, D)."""
        a = self.attn
        y = gated_class_attention(
            self.norm1(tokens),
            self.norm1(x),
            m0,
            a.q.weight,
            a.k.weight,
            a.v.weight,
            a.proj.weight,
            a.proj.bias,
            self.num_heads,
            a.q.bias,
            a.k.bias,
            a.v.bias,
            backend=self.kernel_backend,
        )
        tokens = tokens + self._drop_path(y)
        mlp = self.mlp
        h = mlp.act(mlp.fc1(self.norm2(tokens) * m0)) * m2
        y = mlp.fc2(h) * m0
        return tokens + self._drop_path(y)
