"""Weighted LoRA adapters with protected subspaces: the building block of OWLoRA (CoMEL, Lee et al., ICCV 2025,
arXiv 2507.02395; reference github Hyun1A/CoMEL @9fd6679, ``continual/modules/cl_modules/lora.py``
(``LoRAWeightedLinearLayer``, ``LoRACompatibleIncrementalLinear``) and ``cdatmil_owlora.py``).

:class:`OWLoRALinear` is an ``nn.Linear`` (same ``weight``/``bias``) plus one weighted adapter per later experience,

    y = W x + b + sum_{j < active} U_j diag(s_j) D_j x,     D_j (r x in) ~ N(0, (1/r)^2),  U_j (out x r) = 0,  s_j = 1,

so a new adapter starts at a zero update, and a record of the task-0 weights' principal subspaces: after task 0,
W = U S V^T and d is the smallest rank holding more than ``energy`` (0.99) of sum S^2; ``basis_in`` = V_d^T (d x in) and
``basis_out`` = U_d (out x d) are *stored as the first protected subspace* (the reference computes them but keeps a
random placeholder, so its projection never protects them) and, with ``truncate``, W becomes U_d S_d V_d^T (as the
reference). Unlike the reference, d may be full rank (its search stops at min(out, in) - 1); no option keeps that,
since the two differ only when 99 % of the energy needs every singular value. s is a registered parameter (the
reference's ``nn.Parameter(...).to(None)`` registers it only because ``Tensor.to`` returns the same object).

Subspace protection for the adapter being trained (``projection``):

* ``"orthonormal"`` (default): Q_in is an orthonormal basis of the rows of ``basis_in`` and of every older D_j, Q_out of
  the columns of ``basis_out`` and every older U_j. Gradients become grad_D - grad_D Q_in Q_in^T and
  grad_U - Q_out Q_out^T grad_U, the new D is projected once when its experience starts, and D and U are projected again
  after every optimizer step (Adam rescales each coordinate, which would otherwise move a projected gradient's update
  back into the protected subspaces): D's rows stay orthogonal to every older input subspace and U's columns to every
  older output subspace.
* ``"reference"``: grad_D - sum_j grad_D D_j^T D_j and grad_U - sum_j U_j U_j^T grad_U over the older adapters (the
  placeholder included), on gradients only: a projection only when the D_j (U_j) are orthonormal and mutually
  orthogonal, and not one once Adam rescales the update.

In both, s_j is not projected (it only rescales directions of the adapter's own subspace) and only the newest adapter
trains. The intra-adapter orthogonality penalty is (||D D^T - I||_F^2 + ||U^T U - I||_F^2) / r^2.

Why not peft's AdaLoRA (``peft.tuners.adalora``, whose ``SVDLinear`` has the same P diag(E) Q form and an
orthogonality regulariser): it initialises the singular values E at zero and P, Q at N(0, 0.02) (OWLoRA: s = 1, U = 0,
D ~ N(0, 1/r^2)), scales by alpha / rank, prunes E with its rank allocator, allows a single trainable adapter, adds its
regulariser (unsquared Frobenius norm, averaged over matrices) only to a HuggingFace-style ``outputs.loss`` and has no
hook for projecting one adapter's gradients against older adapters and a stored SVD basis. Each of these would have
to be overridden, so we build the ~150 lines here instead.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTIONS = ("orthonormal", "reference")
INITIAL_BASES = ("svd", "reference")


class WeightedAdapter(nn.Module):
    """One weighted LoRA adapter: ``U diag(s) D``."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.down = nn.Parameter(torch.randn(rank, in_features) / rank)
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.scales = nn.Parameter(torch.ones(rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x @ self.down.T) * self.scales) @ self.up.T

    def ortho_penalty(self) -> torch.Tensor:
        eye = torch.eye(self.rank, device=self.down.device, dtype=self.down.dtype)
        d = (self.down @ self.down.T - eye).pow(2).sum()
        u = (self.up.T @ self.up - eye).pow(2).sum()
        return (d + u) / self.rank**2


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest d >= 1 with sum_{k<d} S_k^2 / sum S^2 > ``energy`` (full rank if no smaller d reaches it)."""
    cum = (singular_values.double() ** 2).cumsum(0)
    frac = cum / cum[-1]
    above = (frac > energy).nonzero()
    return int(above[0]) + 1 if len(above) else len(singular_values)


def orthonormal_rows(rows: torch.Tensor, rtol: float = 1e-5) -> torch.Tensor:
    """An orthonormal basis (k x n) of the span of ``rows`` (m x n); empty (0 x n) when the rows are zero."""
    if rows.numel() == 0:
        return rows.new_zeros(0, rows.shape[-1])
    _, s, vh = torch.linalg.svd(rows.double(), full_matrices=False)
    keep = s > rtol * s.max() if float(s.max()) > 0 else s > 1.0
    return vh[keep].to(rows.dtype)


class OWLoRALinear(nn.Linear):
    """``nn.Linear`` with ``n_adapters`` weighted adapters and a stored task-0 basis; see the module docstring."""

    def __init__(self, base: nn.Linear, ranks: list[int]) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would draw (and spend RNG on) weights we replace
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.adapters = nn.ModuleList(WeightedAdapter(self.in_features, self.out_features, r) for r in ranks)
        k = min(self.in_features, self.out_features)
        self.register_buffer("basis_in", torch.zeros(k, self.in_features))
        self.register_buffer("basis_out", torch.zeros(self.out_features, k))
        self.register_buffer("basis_rank", torch.zeros((), dtype=torch.long))
        self.register_buffer("active", torch.zeros((), dtype=torch.long))
        self._q_in: torch.Tensor | None = None
        self._q_out: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        for adapter in self.adapters[: int(self.active)]:
            out = out + adapter(x)
        return out

    # ------------------------------------------------------------------------------------------- task-0 basis
    @torch.no_grad()
    def save_initial_basis(self, energy: float = 0.99, truncate: bool = True, mode: str = "svd") -> int:
        """Store the rank-d SVD basis of W (``mode="svd"``) or the reference's random placeholder (``"reference"``:
        D ~ N(0, 1/d^2), U = 0); with ``truncate`` replace W by its rank-d reconstruction. Returns d."""
        u, s, vh = torch.linalg.svd(self.weight.double(), full_matrices=False)
        d = energy_rank(s, energy)
        self.basis_in.zero_()
        self.basis_out.zero_()
        if mode == "svd":
            self.basis_in[:d] = vh[:d].to(self.basis_in)
            self.basis_out[:, :d] = u[:, :d].to(self.basis_out)
        else:
            self.basis_in[:d] = torch.randn(d, self.in_features, device=self.basis_in.device) / d
        self.basis_rank.fill_(d)
        if truncate:
            self.weight.copy_(((u[:, :d] * s[:d]) @ vh[:d]).to(self.weight))
        return d

    # ------------------------------------------------------------------------------------------- subspaces
    def older(self, index: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The input-side row blocks and output-side column blocks older than adapter ``index`` (basis first)."""
        d = int(self.basis_rank)
        ins = [self.basis_in[:d]] + [a.down.detach() for a in self.adapters[:index]]
        outs = [self.basis_out[:, :d]] + [a.up.detach() for a in self.adapters[:index]]
        return ins, outs

    @torch.no_grad()
    def prepare(self, index: int, projection: str) -> None:
        """Make adapter ``index`` the trained one: cache the older subspaces and (orthonormal) project its D and U."""
        ins, outs = self.older(index)
        self._q_in = orthonormal_rows(torch.cat(ins)).T.contiguous()  # in x k
        self._q_out = orthonormal_rows(torch.cat(outs, dim=1).T).T.contiguous()  # out x k
        if projection == "orthonormal":
            self.project_params(index)

    def _q(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._q_in is None or self._q_out is None:
            raise RuntimeError("OWLoRALinear.prepare(index) must run before projecting")
        self._q_in, self._q_out = self._q_in.to(device), self._q_out.to(device)
        return self._q_in, self._q_out

    @torch.no_grad()
    def project_grads(self, index: int, projection: str) -> None:
        a = self.adapters[index]
        if projection == "reference":
            ins, outs = self.older(index)
            if a.down.grad is not None:
                a.down.grad -= sum(a.down.grad @ (m.T @ m) for m in ins)
            if a.up.grad is not None:
                a.up.grad -= sum((m @ m.T) @ a.up.grad for m in outs)
            return
        q_in, q_out = self._q(a.down.device)
        if a.down.grad is not None:
            a.down.grad -= (a.down.grad @ q_in) @ q_in.T
        if a.up.grad is not None:
            a.up.grad -= q_out @ (q_out.T @ a.up.grad)

    @torch.no_grad()
    def project_params(self, index: int) -> None:
        a = self.adapters[index]
        q_in, q_out = self._q(a.down.device)
        a.down -= (a.down @ q_in) @ q_in.T
        a.up -= q_out @ (q_out.T @ a.up)


def attach_owlora(model: nn.Module, rank: int, n_adapters: int, qkv_rank_factor: int = 3) -> dict[str, OWLoRALinear]:
    """Replace every ``nn.Linear`` of ``model`` with more than one output by an :class:`OWLoRALinear` with
    ``n_adapters`` adapters of rank ``rank`` (``qkv_rank_factor * rank`` for modules named ``qkv``)."""
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module.out_features > 1
    ]
    out: dict[str, OWLoRALinear] = {}
    for name, module in targets:
        r = rank * qkv_rank_factor if name.split(".")[-1] == "qkv" else rank
        wrapped = OWLoRALinear(module, [r] * n_adapters)
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], wrapped)
        out[name] = wrapped
    return out
