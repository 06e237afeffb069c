"""Continual-learning metrics as pure functions over the accuracy matrix R.

Convention: ``R[t][j]`` is the accuracy (a fraction in [0, 1]) on the test set of experience ``j`` measured after
training through experience ``t``; ``R`` is a ``T x T`` array (numpy or nested lists). Every entry must be measured:
NaN / inf are rejected, because the engine evaluates every experience (seen and unseen) after every training step.
Entries above the diagonal (``j > t``) are accuracies on experiences not yet trained on; only FWT reads them.

Implemented metrics (all indices 0-based, ``T`` = number of experiences):

- ``avg_acc``      A_T   = (1/T) sum_j R[T-1, j]                               (Lopez-Paz & Ranzato 2017, GEM, "ACC";
                                                                               Chaudhry et al. 2018, RWalk, A_k)
- ``avg_inc_acc``        = (1/T) sum_t [ (1/(t+1)) sum_{j<=t} R[t, j] ]        (Rebuffi et al. 2017, iCaRL;
                                                                               Douillard et al. 2020, PODNet)
- ``forgetting``   F_T   = (1/(T-1)) sum_{j<T-1} max_{t in [j, T-2]} (R[t, j] - R[T-1, j])   (Chaudhry et al. 2018)
- ``bwt``                = (1/(T-1)) sum_{j<T-1} (R[T-1, j] - R[j, j])         (GEM, backward transfer)
- ``fwt``                = (1/(T-1)) sum_{j>=1} (R[j-1, j] - b[j])            (GEM, forward transfer; b = accuracies
                                                                               of the untrained model, row "R0")
- ``plasticity``         = (1/T) sum_j R[j, j]                                 (accuracy on the experience just
                                                                               learned, averaged over experiences)
- ``reference_forgetting_fn`` F_N of the CODA-Prompt reference code (Smith et al. 2023, ``utils/calc_forgetting.py``):
  (1/(T-1)) sum_{t=1}^{T-1} (1/t) sum_{i<t} (R[t-1, i] - R[t, i]), the average per-step drop.

Metrics averaged over past experiences (forgetting, bwt, fwt, F_N) are defined as 0.0 when ``T == 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ArrayLike = np.ndarray | Sequence[Sequence[float]]


def _as_float_array(values: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric (accuracies as fractions in [0, 1]); got {values!r}") from exc
    return arr


def _check_values(arr: np.ndarray, name: str) -> None:
    """Reject NaN/inf and values outside [0, 1], naming the first offending entry."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}{list(idx)} = {arr[idx]}: unmeasured (NaN/inf) entries are not allowed; every experience must be "
            "evaluated after every training step (allowed: finite fractions in [0, 1])"
        )
    out = (arr < 0.0) | (arr > 1.0)
    if out.any():
        idx = tuple(int(i) for i in np.argwhere(out)[0])
        hint = " (looks like percent: divide by 100)" if arr.max() <= 100.0 and arr.min() >= 0.0 else ""
        raise ValueError(f"{name}{list(idx)} = {arr[idx]} is outside the allowed range [0, 1]{hint}")


def validate_matrix(R: ArrayLike, name: str = "R", partial: bool = False) -> np.ndarray:
    """Return ``R`` as a float64 array after checking it is a valid accuracy matrix.

    :param R: accuracy matrix, ``R[t][j]`` = accuracy on experience j after training through experience t.
    :param name: name used in error messages (the argument or config key).
    :param partial: if True, accept ``n_rows <= n_cols`` (rows 0..t of a T-column matrix, written during a run);
        otherwise the matrix must be square ``T x T``.
    :raises ValueError: not 2-D, empty, wrong shape, NaN/inf, or values outside [0, 1].
    """
    arr = _as_float_array(R, name)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D matrix (rows: after experience t, columns: experience j); "
            f"got {arr.ndim}-D array of shape {arr.shape}"
        )
    rows, cols = arr.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"{name} must have at least one row and one column; got shape {arr.shape}")
    if partial:
        if rows > cols:
            raise ValueError(
                f"{name} has more rows than columns (shape {arr.shape}); allowed: t+1 <= T rows for a T-column matrix"
            )
    elif rows != cols:
        raise ValueError(f"{name} must be square (T x T); got shape {arr.shape}")
    _check_values(arr, name)
    return arr


def validate_baseline(b: Sequence[float] | np.ndarray, num_experiences: int, name: str = "R0") -> np.ndarray:
    """Check the untrained-model accuracy vector ``b`` (one entry per experience, fractions in [0, 1])."""
    arr = _as_float_array(b, name)
    if arr.ndim != 1 or arr.shape[0] != num_experiences:
        raise ValueError(
            f"{name} must be a vector of length T={num_experiences} (accuracy of the untrained model on "
            f"each experience); got shape {arr.shape}"
        )
    _check_values(arr, name)
    return arr


def trained_prefix(R: ArrayLike, name: str = "R") -> np.ndarray:
    """Square part ``R[:t+1, :t+1]`` of a partial matrix with rows 0..t (the experiences trained so far)."""
    arr = validate_matrix(R, name, partial=True)
    n = arr.shape[0]
    return arr[:n, :n]


def avg_acc(R: ArrayLike) -> float:
    """Final average accuracy A_T = (1/T) sum_j R[T-1, j].

    Source: Lopez-Paz & Ranzato 2017 (GEM, "ACC"); Chaudhry et al. 2018 (RWalk, "A_k").
    """
    arr = validate_matrix(R)
    return float(arr[-1].mean())


def avg_inc_acc(R: ArrayLike) -> float:
    """Average incremental accuracy = (1/T) sum_t [ (1/(t+1)) sum_{j<=t} R[t, j] ].

    The mean, over training steps t, of the average accuracy on the experiences seen so far.
    Source: Rebuffi et al. 2017 (iCaRL); Douillard et al. 2020 (PODNet).
    """
    arr = validate_matrix(R)
    return float(np.mean([arr[t, : t + 1].mean() for t in range(arr.shape[0])]))


def forgetting(R: ArrayLike) -> float:
    """Average forgetting F_T = (1/(T-1)) sum_{j<T-1} max_{t in [j, T-2]} (R[t, j] - R[T-1, j]); 0.0 for T = 1.

    For each past experience j, the drop from its best accuracy after it was learned (before the final step) to its
    final accuracy; can be negative when the final accuracy is the best one.
    Source: Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning" (RWalk), Eq. for f_j^k and F_k.
    """
    arr = validate_matrix(R)
    T = arr.shape[0]
    if T == 1:
        return 0.0
    drops = [float(np.max(arr[j : T - 1, j]) - arr[T - 1, j]) for j in range(T - 1)]
    return float(np.mean(drops))


def bwt(R: ArrayLike) -> float:
    """Backward transfer BWT = (1/(T-1)) sum_{j<T-1} (R[T-1, j] - R[j, j]); 0.0 for T = 1.

    Negative values mean forgetting. Source: Lopez-Paz & Ranzato 2017 (GEM), Eq. (3).
    """
    arr = validate_matrix(R)
    T = arr.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean(arr[T - 1, : T - 1] - np.diag(arr)[: T - 1]))


def fwt(R: ArrayLike, b: Sequence[float] | np.ndarray) -> float:
    """Forward transfer FWT = (1/(T-1)) sum_{j=1}^{T-1} (R[j-1, j] - b[j]); 0.0 for T = 1.

    ``b[j]`` is the accuracy on experience j of the model before any training (randomly initialised / untrained,
    the engine's row "R0"). Source: Lopez-Paz & Ranzato 2017 (GEM), Eq. (4).
    """
    arr = validate_matrix(R)
    T = arr.shape[0]
    base = validate_baseline(b, T)
    if T == 1:
        return 0.0
    return float(np.mean([arr[j - 1, j] - base[j] for j in range(1, T)]))


def plasticity(R: ArrayLike) -> float:
    """Plasticity = (1/T) sum_j R[j, j]: accuracy on each experience right after training on it, averaged.

    Measures how well new experiences are learned, independent of later forgetting (the diagonal of R; also called
    "learning accuracy" / "just-learned accuracy", e.g. Riemer et al. 2019, LA).
    """
    arr = validate_matrix(R)
    return float(np.mean(np.diag(arr)))


def reference_forgetting_fn(R: ArrayLike) -> float:
    """CODA-Prompt reference F_N: average per-step drop; 0.0 for T = 1.

    ``utils/calc_forgetting.py`` of the reference (it assumes equal task sizes):
    F = (1/(T-1)) * sum_{t=1}^{T-1} (1/t) * sum_{i<t} [ R_{t-1,i} - R_{t,i} ], i.e. the average per-step drop
    (not the usual max-based forgetting).
    Source: Smith et al. 2023, CODA-Prompt (CVPR), official code GT-RIPL/CODA-Prompt ``utils/calc_forgetting.py``.
    """
    arr = validate_matrix(R)
    T = arr.shape[0]
    if T == 1:
        return 0.0
    total = sum(float(np.sum(arr[t - 1, :t] - arr[t, :t])) / t for t in range(1, T))
    return total / (T - 1)
