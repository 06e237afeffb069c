"""GCAB-CFDC: gated class-attention with cascaded feature drift compensation (Cotogni, Yang, Cusano, Bagdanov, van de
Weijer, "Exemplar-free Continual Learning of Vision Transformers via Gated Class-Attention and Cascaded Feature Drift
Compensation", arXiv 2211.12292, IJCV 2025). Reference code: github OcraM17/GCAB-CFDC @599e44d (``continual/GCAB.py``,
``continual/convit.py``, ``continual/engine_GCAB.py``, ``continual/scaler.py``, ``main.py``). Exemplar-free.

Model: a trunk of self-attention blocks (any timm ViT through :class:`cl.backbones.Backbone`; ``backbone=convit_gcab``
is the reference's ConViT) -> one class-attention block shared by all experiences
(:class:`cl.modules.gcab_block.GatedClassAttentionBlock`) -> one task token and one head (LayerNorm + Linear) per
experience; the logits of all heads, each at its experience's class ids, form the task-agnostic classifier.

Per batch of experience t (``s`` annealed, :mod:`cl.modules.hat`)::

    L = BCE(logits of the seen classes, one-hot y)                 (loss="ce": cross-entropy instead)
      + lambda_gcab * sum m (1 - p) / sum (1 - p)                  m = (m0_t, m2_t) = sigmoid(s e_t), p = union of
                                                                   the binarised masks of experiences < t
      + lambda_pfr * || F_{t-1}(x) - P_{t-1}(F_t(x)) ||_F          t >= 1, cfdc=true (pfr_loss="mse": the mean of the
                                                                   squares, whose scale is independent of batch size
                                                                   and token count)

Task token c < t uses its binarised gates ``1[sigmoid(s e_c) > 0.5]``; at evaluation ``s = smax`` and the newest
token keeps its soft gate. After backward, the block's weights at (output, input) unit pairs reserved by earlier
experiences get zero gradient (HAT); the gate embeddings' gradients are HAT-compensated (stable form) and clamped to
``[-thres_emb, thres_emb]`` after each step. From experience 1 the trunk's and the block's LayerNorms, the old task
tokens, old heads and old projectors are frozen; the trunk, the block's linear weights (gradient-masked), the new
token, head, gates and projector train. At evaluation token c sees ``P_c o ... o P_{T-2}(F)`` (CFDC's cascade).

Departures from the reference code, each a config key:

* ``projector_norm="token"`` (default): the projector's LayerNorm is over each token's features, so any token count
  works; the reference's ``LayerNorm((384, 1, 64))`` (all N*D values of a sample) is ``projector_norm="sample"``.
* ``freeze_new_head_norm=true``: from experience 1 the new head's LayerNorm is frozen, as the reference intends
  (it sets ``requires_grad`` on the module, which freezes nothing).
* Reserved block weights are restored bit-for-bit after every optimizer step (``restore_reserved=true``), so weight
  decay (the reference's AdamW, 1e-6) cannot move them either; the reference's gradient mask alone lets it.
* The gate-embedding compensation is computed in closed form (the reference loses it where ``s |e| >~ 10``).
* Evaluation runs in the trainer's precision (the reference always evaluates under fp16 autocast); gates live on
  modules, not parameter names, so DDP's ``module.`` prefix changes nothing.
* ``gate_lr`` (default null: the optimizer's lr, as the reference): a learning rate of its own for the gate
  embeddings. Under Adam an embedding moves by at most ~lr per step and only while ``s |e| < thres_cosh`` (else HAT's
  compensated gradient vanishes), so in a short budget the gates keep the signs of their N(0, 1) initialisation: each
  experience reserves a random half of the block's units and the free units run out (measured in
  experiments/gcab_digits/README.md; the preset keeps the shared lr). The reference trains ~2e4 steps per task.
* Parameters are allocated for every experience of the stream when the stream is known (``setup_stream``), so the
  state dict has the same keys before and after any experience; the reference grows them per task.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn
from torch.utils.data import Dataset

from cl.data.stream import Experience, Stream
from cl.methods.base import ContinualMethod
from cl.modules import hat
from cl.modules.drift_projector import DriftProjector, cascade
from cl.modules.gcab_block import GatedClassAttentionBlock
from kernels.gated_attention import BACKENDS as KERNEL_BACKENDS

LOSSES = ("bce", "ce")
PFR_LOSSES = ("norm", "mse")


class GCAB(ContinualMethod):
    """Gated class-attention (HAT masks) + cascaded feature drift compensation; see the module docstring."""

    SCENARIOS: ClassVar[tuple[str, ...]] = ("class", "task")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        *,
        smax: float = 800.0,
        lambda_gcab: float = 0.05,
        lambda_pfr: float = 0.001,
        pfr_loss: str = "norm",
        loss: str = "bce",
        cfdc: bool = True,
        thres_cosh: float = 50.0,
        thres_emb: float = 6.0,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path: float = 0.1,
        projector_norm: str = "token",
        freeze_new_head_norm: bool = True,
        restore_reserved: bool = True,
        kernel_backend: str = "auto",
        gate_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, num_classes, optimizer, scheduler, **kwargs)
        if loss not in LOSSES:
            raise ValueError(f"method.loss={loss!r}; allowed: {list(LOSSES)}")
        if kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"method.kernel_backend={kernel_backend!r}; allowed: {list(KERNEL_BACKENDS)}")
        if pfr_loss not in PFR_LOSSES:
            raise ValueError(f"method.pfr_loss={pfr_loss!r}; allowed: {list(PFR_LOSSES)}")
        if gate_lr is not None and not gate_lr > 0:
            raise ValueError(f"method.gate_lr={gate_lr}; allowed: null (the optimizer's lr) or a float > 0")
        if not smax > 0:
            raise ValueError(f"method.smax={smax}; must be > 0")
        if not getattr(backbone, "is_vit", False):
            raise ValueError("method=gcab needs a ViT trunk (backbone=vit_tiny, convit_gcab, vit_b16, ...)")
        self.smax, self.lambda_gcab, self.lambda_pfr = float(smax), float(lambda_gcab), float(lambda_pfr)
        self.pfr_loss, self.loss_name, self.cfdc = pfr_loss, loss, bool(cfdc)
        self.thres_cosh, self.thres_emb = float(thres_cosh), float(thres_emb)
        self.freeze_new_head_norm, self.restore_reserved = bool(freeze_new_head_norm), bool(restore_reserved)
        self.projector_norm = projector_norm
        self.gate_lr = None if gate_lr is None else float(gate_lr)
        dim = int(backbone.num_features)
        heads = num_heads or int(backbone.blocks[-1].attn.num_heads)
        del self.head  # one head per experience instead (self.heads)
        self.block = GatedClassAttentionBlock(dim, heads, mlp_ratio, qkv_bias, drop_path, kernel_backend)
        self.task_tokens = nn.ParameterList()
        self.heads = nn.ModuleList()
        self.e0 = nn.ParameterList()  # HAT gate embeddings: m0 over the D channels
        self.e2 = nn.ParameterList()  # m2 over the MLP's hidden units
        self.projectors = nn.ModuleList()  # P_0 .. P_{T-2}
        self.register_buffer("m0_pre", torch.zeros(dim))  # union of the binarised masks of finished experiences
        self.register_buffer("m2_pre", torch.zeros(self.block.hidden))
        self.register_buffer("logit_slots", torch.zeros(0, dtype=torch.long), persistent=False)
        self.unused_trunk = _unused_parameters(backbone)
        for name, p in backbone.named_parameters():
            if name in self.unused_trunk:
                p.requires_grad_(False)
        self._teacher: list[nn.Module] = []  # trunk frozen at the end of the previous experience (not in state_dict)
        self._snapshot: list[Tensor] = []
        self._s = self.smax
        self.step_metrics: dict[str, Tensor] = {}

    # ------------------------------------------------------------------------------------------------ stream hooks
    def setup_stream(self, stream: Stream) -> None:
        """Allocate a task token, head, gate embeddings and (from the second experience) a projector per
        experience, once; a second call checks the stream has the same experience sizes."""
        super().setup_stream(stream)
        sizes = [len(e.classes) for e in stream.experiences]
        if len(self.heads):
            if [h[1].out_features for h in self.heads] != sizes:
                raise ValueError(
                    f"method=gcab was built for experiences of sizes {[h[1].out_features for h in self.heads]}"
                )
        else:
            dim, dev = self.m0_pre.shape[0], self.m0_pre.device
            n_tokens = self.backbone.model.patch_embed.num_patches if self.projector_norm == "sample" else None
            for t, n in enumerate(sizes):
                tok = nn.Parameter(torch.zeros(1, dim, device=dev))
                trunc_normal_(tok, std=0.02)
                self.task_tokens.append(tok)
                self.heads.append(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n)).to(dev))
                self.e0.append(nn.Parameter(torch.randn(dim, device=dev)))  # nn.Embedding's N(0, 1)
                self.e2.append(nn.Parameter(torch.randn(self.block.hidden, device=dev)))
                if t:
                    self.projectors.append(DriftProjector(dim, self.projector_norm, n_tokens).to(dev))
            self._set_trainable(0)
        slots = [c for e in stream.experiences for c in e.classes]
        self.logit_slots = torch.tensor(slots, dtype=torch.long, device=self.m0_pre.device)

    def on_experience_start(self, experience: Experience) -> None:
        super().on_experience_start(experience)
        t = experience.index
        self._set_trainable(t)
        self._teacher.clear()
        if self.cfdc and t >= 1:
            teacher = copy.deepcopy(self.backbone).eval()
            teacher.requires_grad_(False)
            self._teacher.append(teacher)
        self._snapshot = [p.detach().clone() for p, _, _ in self.block.gated_parameters()]

    def on_experience_end(self, experience: Experience, loader_factory: Callable[[Dataset], Any]) -> None:
        """Add the experience's binarised gates (s = smax) to the union of reserved units."""
        t = experience.index
        self.m0_pre.copy_(torch.maximum(self.m0_pre, hat.binarise(self.e0[t], self.smax)))
        self.m2_pre.copy_(torch.maximum(self.m2_pre, hat.binarise(self.e2[t], self.smax)))
        self._teacher.clear()
        self._snapshot = []

    def _set_trainable(self, t: int) -> None:
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name not in self.unused_trunk)
        if t >= 1:  # LayerNorms of the trunk's blocks and of the class-attention block are frozen after experience 0
            for m in list(self.backbone.blocks.modules()) + [self.block.norm1, self.block.norm2]:
                if isinstance(m, nn.LayerNorm):
                    m.requires_grad_(False)
        for i, (tok, head, e0, e2) in enumerate(zip(self.task_tokens, self.heads, self.e0, self.e2, strict=True)):
            for p in (tok, e0, e2, *head.parameters()):
                p.requires_grad_(i == t)
            if i == t and t >= 1 and self.freeze_new_head_norm:
                head[0].requires_grad_(False)
        for i, proj in enumerate(self.projectors):
            proj.requires_grad_(self.cfdc and i == t - 1)

    def optimizer_param_groups(self) -> list[Any]:
        """The trainable parameters; with ``gate_lr`` the gate embeddings form a group of their own at that learning
        rate, without weight decay."""
        params = self.trainable_parameters()
        if self.gate_lr is None:
            return params
        ids = {id(p) for p in [*self.e0, *self.e2]}
        rest = [p for p in params if id(p) not in ids]
        gates = [p for p in params if id(p) in ids]
        return [{"params": rest}, {"params": gates, "lr": self.gate_lr, "weight_decay": 0.0}]

    # ------------------------------------------------------------------------------------------------ forward
    def gates(self, s: float, n_tokens: int, binarise_old: bool) -> tuple[Tensor, Tensor]:
        """``(m0, m2)`` of the first ``n_tokens`` task tokens: binarised for all but the last when ``binarise_old``."""
        m0, m2 = [], []
        for c in range(n_tokens):
            if binarise_old and c < n_tokens - 1:
                m0.append(hat.binarise(self.e0[c], s))
                m2.append(hat.binarise(self.e2[c], s))
            else:
                m0.append(hat.gate(self.e0[c], s, self.smax, self.thres_cosh))
                m2.append(hat.gate(self.e2[c], s, self.smax, self.thres_cosh))
        return torch.stack(m0), torch.stack(m2)

    def gcab_forward(self, x: Tensor, s: float, project: bool) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """``(logits over all classes, trunk features F (B, N, D), (m0, m2) of the newest token)``."""
        t = int(self.experience_index)
        n_tokens = t + 1 if t >= 0 else len(self.heads)  # before any training: every token, soft gates
        feats = self.backbone.block_tokens(x)
        m0, m2 = self.gates(s, n_tokens, binarise_old=t >= 1)
        inputs = feats
        if project and self.cfdc and t >= 1:
            inputs = torch.stack(cascade(feats, self.projectors, n_tokens))
        tokens = torch.cat(list(self.task_tokens[:n_tokens])).unsqueeze(0).expand(x.shape[0], -1, -1)
        out = self.block(tokens, inputs, m0.to(feats.dtype), m2.to(feats.dtype))
        parts = torch.cat([self.heads[c](out[:, c]) for c in range(n_tokens)], dim=1)
        logits = parts.new_zeros(x.shape[0], self.num_classes)
        logits = logits.index_copy(1, self.logit_slots[: parts.shape[1]], parts)
        return logits, feats, (m0[-1], m2[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Evaluation logits: ``s = smax``, CFDC's cascade for the old task tokens."""
        return self.gcab_forward(x, self.smax, project=True)[0]

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Any:
        n = getattr(
            self._trainer, "num_training_batches", 1
        )  # HAT's B: batches per epoch (the reference's len(loader))
        self._s = hat.anneal_s(batch_idx, int(n) if n != float("inf") else 1, self.smax)
        return super().training_step(batch, batch_idx)

    def compute_loss(self, x: Tensor, y: Tensor, batch: Sequence[Any]) -> Tensor:
        logits, feats, masks = self.gcab_forward(x, self._s, project=False)
        cols = self.train_logit_mask()
        if self.loss_name == "bce":
            target = F.one_hot(y, self.num_classes).to(logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits[:, cols], target[:, cols])
        else:
            loss = F.cross_entropy(self.apply_mask(logits, cols), y)
        previous = [self.m0_pre, self.m2_pre] if int(self.experience_index) >= 1 else None
        reg = self.lambda_gcab * hat.mask_regulariser(list(masks), previous)
        self.step_metrics = {"train/gcab_reg": reg.detach()}
        loss = loss + reg
        if self._teacher:
            pfr = self.drift_loss(x, feats)
            self.step_metrics["train/pfr"] = pfr.detach()
            loss = loss + pfr
        return loss

    def drift_loss(self, x: Tensor, feats: Tensor) -> Tensor:
        """``lambda_pfr * ||F_{t-1}(x) - P_{t-1}(F_t(x))||`` (Frobenius, or the mean square with pfr_loss=mse)."""
        teacher = self._teacher[0]
        if next(teacher.parameters()).device != x.device:
            teacher.to(x.device)
        with torch.no_grad():
            target = teacher.block_tokens(x)
        diff = target - self.projectors[int(self.experience_index) - 1](feats)
        if self.pfr_loss == "norm":
            return self.lambda_pfr * torch.linalg.vector_norm(diff)
        return self.lambda_pfr * diff.pow(2).mean()

    def on_after_backward(self) -> None:
        """HAT: zero the gradient of the block's weights between units reserved by earlier experiences."""
        if int(self.experience_index) < 1:
            return
        pre = {"m0": self.m0_pre, "m2": self.m2_pre}
        for p, out, inp in self.block.gated_parameters():
            if p.grad is not None:
                keep = 1 - (pre[out] if inp is None else pre[out][:, None] * pre[inp][None, :])
                p.grad.mul_(keep.to(p.grad.dtype))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the step: clamp the gate embeddings; restore the reserved block weights bit-for-bit."""
        t = int(self.experience_index)
        with torch.no_grad():
            self.e0[t].clamp_(-self.thres_emb, self.thres_emb)
            self.e2[t].clamp_(-self.thres_emb, self.thres_emb)
            if self.restore_reserved and t >= 1 and self._snapshot:
                pre = {"m0": self.m0_pre, "m2": self.m2_pre}
                for (p, out, inp), old in zip(self.block.gated_parameters(), self._snapshot, strict=True):
                    reserved = hat.reserved_pairs(pre[out], None if inp is None else pre[inp])
                    p.copy_(torch.where(reserved, old.to(p.device), p))

    def report_metrics(self) -> dict[str, Any]:
        """Share of the block's units reserved so far (HAT's capacity use)."""
        return {
            "gcab_reserved_m0": float(self.m0_pre.mean()),
            "gcab_reserved_m2": float(self.m2_pre.mean()),
        }


def _unused_parameters(backbone: nn.Module) -> set[str]:
    """Names of trunk parameters that ``block_tokens`` does not use (final norm, pooling head, a class token that is
    only inserted after the kept blocks), found by one backward pass on a blank image; they are frozen."""
    model = backbone.model
    size = model.patch_embed.img_size
    chans = model.patch_embed.proj.in_channels
    was_training = backbone.training
    backbone.eval()
    grads = {n: p.grad for n, p in backbone.named_parameters()}
    for p in backbone.parameters():
        p.grad = None
    with torch.enable_grad():
        x = torch.zeros(1, chans, *size, device=next(backbone.parameters()).device)
        backbone.block_tokens(x).sum().backward()
    unused = {n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None}
    for n, p in backbone.named_parameters():
        p.grad = grads[n]
    backbone.train(was_training)
    return unused
