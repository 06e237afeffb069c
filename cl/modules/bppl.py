"""BPPL: bag-prototype pseudo-labels for instance supervision (CoMEL, Lee et al., ICCV 2025, arXiv 2507.02395;
reference github Hyun1A/CoMEL @9fd6679, ``continual/main/continual_instance/cdatmil_ppl_ft_trainer.py``, "PPL").

For a positive bag that the model classifies correctly, with attention a_i, instance probabilities p_i (the
backbone's normalised attention), instance features h_i and bag feature z:

    z_neg = sum_i w_i h_i,  w_i = (1 - a_i) / sum_j (1 - a_j)                  negative prototype
    s_i = softmax([cos(h_i, z_neg), cos(h_i, z)] / T)                          y_i = argmax s_i, c_i = max s_i
    keep i  iff  bag confidence > tau1  and  c_i > tau2
    L_inst = (n_kept / N) * mean_{i kept} -log([1 - p_i, p_i][y_i] + 1e-10)

and after every epoch tau2 = (1 + tau * quality / n_slides) / 2, where quality sums the softmax confidence of the
correctly classified training bags (T = 1, tau1 = 0.95, tau = 0.5 = the initial tau2, as the reference).

A bag is positive when its label is odd (the reference's ``label % 2 == 1``: tumor labels in CAMELYON16/PAIP) unless
``positive_classes`` names the positive labels. The reference trains one bag per step; here each bag of a batch is
pseudo-labelled on its own and the per-bag losses are averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def bag_pseudo_labels(
    attention: torch.Tensor, instances: torch.Tensor, bag: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y (N,), c (N,))``: BPPL's pseudo-labels (1 = positive) and their confidences for one bag's real instances
    (``attention`` (N,), ``instances`` (N, C), ``bag`` (C,))."""
    w = (1.0 - attention) / (1.0 - attention).sum()
    z_neg = w @ instances
    protos = F.normalize(torch.stack([z_neg, bag]), dim=-1)
    sims = F.normalize(instances, dim=-1) @ protos.T
    conf, label = (sims / temperature).softmax(dim=-1).max(dim=-1)
    return label, conf


def instance_loss(probs: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``(n_kept / N) * NLL(log [1 - p, p], y)`` over the kept instances (0 when none is kept)."""
    if not bool(keep.any()):
        return probs.new_zeros(())
    p = probs[keep]
    logp = torch.log(torch.stack([1.0 - p, p], dim=-1) + 1e-10)
    return keep.float().mean() * F.nll_loss(logp, labels[keep])


class BPPL(nn.Module):
    """BPPL's thresholds and adaptive tau2 (buffers, so they are checkpointed with the method)."""

    def __init__(
        self,
        temperature: float = 1.0,
        tau1: float = 0.95,
        tau: float = 0.5,
        positive_classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"method.bppl_temperature={temperature}; must be > 0")
        self.temperature, self.tau1, self.tau = float(temperature), float(tau1), float(tau)
        self.positive_classes = None if positive_classes is None else [int(c) for c in positive_classes]
        self.register_buffer("tau2", torch.tensor(float(tau)))
        self.register_buffer("quality", torch.zeros((), dtype=torch.float64))
        self.register_buffer("n_slides", torch.zeros((), dtype=torch.float64))

    def is_positive(self, y: torch.Tensor) -> torch.Tensor:
        if self.positive_classes is None:
            return y % 2 == 1
        return torch.isin(y, torch.tensor(self.positive_classes, device=y.device))

    def loss(
        self,
        logits: torch.Tensor,
        y: torch.Tensor,
        attention: torch.Tensor,
        probs: torch.Tensor,
        instances: torch.Tensor,
        bags: torch.Tensor,
        valid: torch.Tensor,
    ) -> tuple[torch.Tensor, int]:
        """The batch's mean instance loss and the number of instances kept; also accumulates the epoch's quality."""
        conf, pred = logits.detach().softmax(dim=-1).max(dim=-1)
        correct = pred == y
        self.quality += (conf * correct).sum().to(self.quality)
        self.n_slides += len(y)
        total, kept = logits.new_zeros(()), 0
        for b in torch.nonzero(correct & self.is_positive(y)).flatten().tolist():
            m = valid[b]
            labels, c = bag_pseudo_labels(attention[b, m], instances[b, m], bags[b], self.temperature)
            keep = (c > self.tau2) & bool(conf[b] > self.tau1)
            total = total + instance_loss(probs[b, m], labels, keep)
            kept += int(keep.sum())
        return total / len(y), kept

    @torch.no_grad()
    def end_epoch(self) -> None:
        """tau2 = (1 + tau * quality / n_slides) / 2, then reset the epoch's counts."""
        if float(self.n_slides) > 0:
            self.tau2.fill_(0.5 * (1.0 + self.tau * float(self.quality) / float(self.n_slides)))
        self.quality.zero_()
        self.n_slides.zero_()
