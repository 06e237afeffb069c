"""Bag- and instance-level scores of a MIL model on one test set, as CoMEL reports them (Lee et al., ICCV 2025,
arXiv 2507.02395; reference github Hyun1A/CoMEL @9fd6679, ``continual/utils.py`` ``five_scores_and_seg_scores`` and
``compute_seg_scores``), computed with torchmetrics.

Bag level (over the evaluated experience's classes K): accuracy; macro F1 over K (a prediction outside K counts as
wrong); AUC: binary AUROC for two classes, else the one-vs-one macro AUC of the reference (scikit-learn's
``roc_auc_score(multi_class="ovo")``, which torchmetrics does not have) on the probabilities renormalised over K.

Instance level (instances with a known patch label, all bags pooled): AUROC of the instance probabilities; accuracy
and F1 at the ROC-optimal threshold argmin(FPR - TPR) (the reference's ``optimal_thresh``); on every positive bag with
patch labels, IoU = |P n G| / (|P| + |G| - |P n G| + 1e-5) and Dice = 2 |P n G| / (|P| + |G| + 1e-5) of the predicted
(prob >= threshold) and true tumor instances, averaged over those bags (the reference's "mIoU" is this mean tumor IoU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_roc,
    multiclass_f1_score,
)

BAG_METRICS = ("acc", "auc", "f1")
INSTANCE_METRICS = ("auc", "acc", "f1", "dice", "iou")


def bag_scores(probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> dict[str, float]:
    """``probs`` (M, C) over all classes (rows sum to 1), ``labels`` (M,) global ids, ``classes`` the experience's."""
    cls = torch.tensor(list(classes))
    K = len(cls)
    local = {int(c): i for i, c in enumerate(cls.tolist())}
    target = torch.tensor([local[int(y)] for y in labels])
    pred_global = probs.argmax(dim=1)
    pred = torch.tensor([local.get(int(p), K) for p in pred_global])  # K = "a class outside the experience"
    f1 = multiclass_f1_score(pred, target, num_classes=K + 1, average="none")[:K]
    present = torch.bincount(target, minlength=K) > 0
    sub = probs[:, cls]
    sub = sub / sub.sum(dim=1, keepdim=True).clamp_min(1e-12)
    if len(torch.unique(target)) < 2:
        auc = float("nan")
    elif K == 2:
        auc = float(binary_auroc(sub[:, 1], target))
    else:
        from sklearn.metrics import roc_auc_score

        auc = float(
            roc_auc_score(target.numpy(), sub.numpy(), multi_class="ovo", average="macro", labels=list(range(K)))
        )
    return {"acc": float((pred == target).float().mean()), "auc": auc, "f1": float(f1[present].mean())}


def optimal_threshold(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """argmin over the ROC's thresholds of FPR - TPR (Youden's J)."""
    fpr, tpr, thr = binary_roc(probs, labels)
    return float(thr[torch.argmin(fpr - tpr)])


def instance_scores(
    probs: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], positive_bags: Sequence[bool]
) -> dict[str, float] | None:
    """Per-bag instance probabilities and labels (-1 = unknown); ``None`` without both instance classes."""
    known = [lab >= 0 for lab in labels]
    p = torch.cat([pr[k] for pr, k in zip(probs, known, strict=True)]).float()
    y = torch.cat([lab[k] for lab, k in zip(labels, known, strict=True)]).long()
    if len(y) == 0 or len(torch.unique(y)) < 2:
        return None
    thr = optimal_threshold(p, y)
    pred = (p >= thr).long()  # the reference's >= (torchmetrics' own thresholding is >)
    out = {
        "auc": float(binary_auroc(p, y)),
        "acc": float(binary_accuracy(pred, y)),
        "f1": float(binary_f1_score(pred, y)),
        "threshold": thr,
    }
    dice, iou = [], []
    for pr, lab, k, pos in zip(probs, labels, known, positive_bags, strict=True):
        if not pos or not bool(k.any()):
            continue
        pred, true = pr[k] >= thr, lab[k] == 1
        overlap = float((pred & true).sum())
        area_p, area_t = float(pred.sum()), float(true.sum())
        iou.append(overlap / (area_p + area_t - overlap + 1e-5))
        dice.append(2 * overlap / (area_p + area_t + 1e-5))
    out["dice"] = sum(dice) / len(dice) if dice else float("nan")
    out["iou"] = sum(iou) / len(iou) if iou else float("nan")
    return out
