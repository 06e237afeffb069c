"""Membership-inference attacks on the forget set; each returns the fraction of forget samples called "member".

* ``mia_entropy`` -- the SSD reference's attack (``src/metrics.py``, ``get_membership_attack_prob``): the entropy of
  the softmax output of each sample; a logistic regression (``class_weight="balanced"``, lbfgs) is fit on the entropies
  of the retain-train samples (label 1, members) against those of the test samples (label 0, non-members), then
  applied to the forget-train samples. Unlike the reference, entropies are computed in batches (same values) and the
  softmax is over the seen classes.
* ``mia_loss`` -- a loss-threshold attack (Yeom et al., CSF 2018): a sample is a member when its cross-entropy loss is
  below a threshold; the threshold is the one that best separates retain-train from test losses (highest balanced
  accuracy over every observed loss value), then applied to the forget-train losses.

For a retrained model the forget set is not a member, so a good unlearning method brings both values toward the
retrained model's, not to 0.
"""

from __future__ import annotations

import numpy as np


def entropy_attack(retain_entropy: np.ndarray, test_entropy: np.ndarray, forget_entropy: np.ndarray) -> float:
    """Fraction of ``forget_entropy`` the logistic regression (fit as in the module docstring) calls member."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([retain_entropy, test_entropy]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(retain_entropy)), np.zeros(len(test_entropy))])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs")
    clf.fit(x, y)
    return float(clf.predict(np.asarray(forget_entropy).reshape(-1, 1)).mean())


def best_threshold(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> float:
    """The threshold ``tau`` maximising the balanced accuracy of "member iff loss <= tau"."""
    cand = np.unique(np.concatenate([member_loss, nonmember_loss]))
    m = np.sort(member_loss)
    nm = np.sort(nonmember_loss)
    tpr = np.searchsorted(m, cand, side="right") / max(len(m), 1)
    tnr = 1.0 - np.searchsorted(nm, cand, side="right") / max(len(nm), 1)
    return float(cand[int(np.argmax(tpr + tnr))])


def loss_attack(retain_loss: np.ndarray, test_loss: np.ndarray, forget_loss: np.ndarray) -> float:
    """Fraction of ``forget_loss`` at or below the threshold fit on retain-train (members) vs test losses."""
    tau = best_threshold(np.asarray(retain_loss), np.asarray(test_loss))
    return float((np.asarray(forget_loss) <= tau).mean())
