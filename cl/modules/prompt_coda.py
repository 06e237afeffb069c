"""CODA-Prompt's decomposed prompt (Smith et al., "CODA-Prompt: COntinual Decomposed Attention-based Prompting for
Rehearsal-Free Continual Learning", CVPR 2023; reference code GT-RIPL/CODA-Prompt ``models/zoo.py`` ``CodaPrompt``).

Per prompted layer l: components P_l (M x L_p x D), keys K_l (M x D_k), attention vectors A_l (M x D_k). With the
query q(x) (CLS token of the frozen, un-prompted ViT) the component weights and the prompt are (paper Eq. 3-5)::

    alpha_m(x) = cos(q(x) ⊙ A_m, K_m) = <q⊙A_m, K_m> / (||q⊙A_m|| ||K_m||)     (raw cosine: no softmax, no top-k)
    p_l(x)     = sum_m alpha_m(x) P_{l,m}

Task-wise allocation: with pt = M / N components per task, task t owns [s, f) = [t*pt, (t+1)*pt). Training on task t
uses components [0, f), the past ones [0, s) detached; inference after task t uses [0, f). At the start of every task
the new components [s, f) of K, A and P (flattened to M x L_p*D) are re-initialised by Gram-Schmidt (fresh randn
vectors made orthogonal to all earlier components and to each other, unit norm; components >= f are zero, as in the
reference). Orthogonality penalty (paper Eq. 6; the code's mean form): ortho(B) = mean((B B^T - I)^2) over the
concatenation [detached past ; current] components, lambda * sum_l [ortho(K_l) + ortho(A_l) + ortho(P_l)].

Departures from the reference code, both deliberate: (1) the new components are orthogonalised against an orthonormal
basis (QR) of the span of the past components; the reference projects on the raw past rows, which is exact only
while those stay orthogonal (after training they generally are not), so its new components are not exactly
orthogonal to the old ones. (2) ``ortho_penalty`` builds the identity on the tensor's device (the reference calls
``.cuda()``, so its lambda > 0 fails on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """``mean((t t^T - I)^2)`` for a 2-D ``t`` (rows = components)."""
    eye = torch.eye(t.shape[0], device=t.device, dtype=t.dtype)
    return ((t @ t.T - eye) ** 2).mean()


def gram_schmidt(vv: torch.Tensor, s: int, f: int, max_tries: int = 10) -> torch.Tensor:
    """New ``(M, d)`` tensor: rows ``[0, s)`` copied from ``vv``; rows ``[s, f)`` random unit vectors orthogonal to
    rows ``[0, s)`` and to each other; rows ``>= f`` zero. A vector whose residual norm is below 1e-8 is resampled."""
    M, d = vv.shape
    if not 0 <= s <= f <= M:
        raise ValueError(f"component range [{s}, {f}) is outside the pool of {M}")
    if f > d:
        raise ValueError(f"cannot make {f} components orthogonal in dimension {d}; use a pool of at most {d}")
    out = torch.zeros_like(vv)
    out[:s] = vv[:s]
    basis = vv.new_zeros(d, 0).double()
    if s:  # an orthonormal basis of the span of the past components (numerically null directions dropped)
        qmat, rmat = torch.linalg.qr(vv[:s].T.double(), mode="reduced")
        basis = qmat[:, rmat.diagonal().abs() > 1e-10]
    for k in range(s, f):
        for _ in range(max_tries):
            v = torch.randn(d, dtype=torch.float64, device=vv.device)
            u = v - basis @ (basis.T @ v)
            u = u - basis @ (basis.T @ u)  # re-orthogonalise once (numerical safety)
            if u.norm() >= 1e-8:
                break
        else:
            raise RuntimeError(f"Gram-Schmidt could not find a vector orthogonal to {basis.shape[1]} components")
        u = u / u.norm()
        out[k] = u.to(vv.dtype)
        basis = torch.cat([basis, u[:, None]], dim=1)
    return out


class CodaPool(nn.Module):
    """CODA-Prompt's components, keys and attention vectors for each prompted layer (see the module docstring)."""

    def __init__(self, layers: list[int], pool_size: int, length: int, dim: int, key_dim: int, ortho_weight: float):
        super().__init__()
        if pool_size < 1 or length < 0:
            raise ValueError(f"method.pool_size={pool_size}, method.prompt_length={length}; need pool >= 1, L >= 0")
        limit = min(key_dim, length * dim if length else key_dim)
        if pool_size > limit:
            raise ValueError(
                f"method.pool_size={pool_size} exceeds the dimension of the components (key dim {key_dim}, prompt "
                f"size L*D = {length * dim}): they cannot be orthogonal; allowed: pool_size <= {limit}"
            )
        self.layers = [int(i) for i in layers]
        self.pool_size, self.length, self.dim, self.key_dim = pool_size, length, dim, key_dim
        self.ortho_weight = float(ortho_weight)
        # U(0, 1) like the reference; every task's own components are re-drawn by Gram-Schmidt in start_task
        self.P = nn.ParameterDict({str(i): nn.Parameter(torch.rand(pool_size, length, dim)) for i in self.layers})
        self.K = nn.ParameterDict({str(i): nn.Parameter(torch.rand(pool_size, key_dim)) for i in self.layers})
        self.A = nn.ParameterDict({str(i): nn.Parameter(torch.rand(pool_size, key_dim)) for i in self.layers})
        self.register_buffer("task_count", torch.tensor(0))
        self.register_buffer("n_tasks", torch.tensor(0))

    def set_num_tasks(self, n_tasks: int) -> None:
        """Fix N; the pool must divide into N equal task slices (checked before training)."""
        if n_tasks < 1 or self.pool_size % n_tasks:
            allowed = [d for d in range(1, self.pool_size + 1) if self.pool_size % d == 0]
            raise ValueError(
                f"method.pool_size={self.pool_size} is not divisible by the number of experiences "
                f"scenario.n_experiences={n_tasks}; allowed numbers of experiences: {allowed} (or change pool_size)"
            )
        self.n_tasks.fill_(n_tasks)

    def task_range(self, task: int | None = None) -> tuple[int, int]:
        """``(s, f)``: the components owned by ``task`` are ``[s, f)`` (default: the current task)."""
        if int(self.n_tasks) < 1:
            raise RuntimeError("CodaPool.set_num_tasks must be called before use")
        pt = self.pool_size // int(self.n_tasks)
        t = int(self.task_count) if task is None else task
        return t * pt, (t + 1) * pt

    @torch.no_grad()
    def start_task(self, task: int) -> None:
        """Make ``task`` current and re-initialise its components by Gram-Schmidt against all earlier ones."""
        self.task_count.fill_(task)
        s, f = self.task_range()
        for i in map(str, self.layers):
            for group in (self.K, self.A):
                group[i].copy_(gram_schmidt(group[i].data, s, f))
            p = self.P[i]
            if self.length:
                p.copy_(gram_schmidt(p.data.reshape(self.pool_size, -1), s, f).reshape(p.shape))

    def _active(self, t: torch.Tensor, train: bool) -> torch.Tensor:
        s, f = self.task_range()
        return torch.cat([t[:s].detach(), t[s:f]], dim=0) if train else t[:f]

    @staticmethod
    def weights(q: torch.Tensor, K: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """``alpha[b, m] = cos(q_b ⊙ A_m, K_m)``, shape ``(B, M')``."""
        aq = F.normalize(q[:, None, :] * A[None], dim=2)
        return torch.einsum("bkd,kd->bk", aq, F.normalize(K, dim=1))

    def forward(self, q: torch.Tensor, train: bool = False) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Prompts ``{layer: (B, 1, L_p, D)}`` for the queries ``q`` (B, D_k) and the weighted ortho loss."""
        prompts: dict[int, torch.Tensor] = {}
        loss = q.new_zeros(())
        for layer in self.layers:
            i = str(layer)
            K, A, P = (self._active(g[i], train) for g in (self.K, self.A, self.P))
            alpha = self.weights(q, K, A)
            prompts[layer] = torch.einsum("bk,kld->bld", alpha, P)[:, None]
            if train and self.ortho_weight > 0:
                pen = ortho_penalty(K) + ortho_penalty(A) + ortho_penalty(P.reshape(P.shape[0], -1))
                loss = loss + self.ortho_weight * pen
        return prompts, loss
