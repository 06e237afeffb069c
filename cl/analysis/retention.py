"""Recall and recognition of seen examples, as curves over the updates since they were seen.

After Orhan, "Recognition, recall, and retention of few-shot memories in large language models" (arXiv 2303.17557):
a model is shown examples, training then continues on other data, and two abilities are tracked as a function of the
number of updates since exposure:

* **recall**: can the model still produce the seen answer? For a classifier, the accuracy on the probe examples
  (task-agnostic logits, as the accuracy matrix); for a causal LM, exact-match greedy completion of the probe text
  cued by its first part (:func:`lm_scores`).
* **recognition**: can the model tell a seen example from a never-seen one? The paper's two-alternative forced choice
  (:func:`two_afc`: pair i of seen and never-seen examples is answered right when the seen one has the lower loss; a
  tie counts one half) and the area under the ROC curve of the loss over all seen/never-seen pairs
  (:func:`loss_auc`, the signal of a loss-based membership-inference attack). Chance is 0.5 for both.

This module holds the pure scoring and plotting functions; :mod:`cl.callbacks.retention` decides when to call them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cl.utils.atomic import write_with

COLUMNS = (
    "experience",
    "updates_since_exposure",
    "step",
    "recall",
    "recognition_2afc",
    "recognition_auc",
    "unseen_recall",
)


def two_afc(seen_loss: torch.Tensor, unseen_loss: torch.Tensor) -> float:
    """Fraction of pairs (seen_i, unseen_i) where the seen example has the lower loss; ties count 1/2."""
    if seen_loss.shape != unseen_loss.shape or seen_loss.ndim != 1 or not len(seen_loss):
        raise ValueError(
            f"two_afc needs two 1-D loss vectors of one length; got {seen_loss.shape}, {unseen_loss.shape}"
        )
    win = (seen_loss < unseen_loss).double() + 0.5 * (seen_loss == unseen_loss).double()
    return float(win.mean())


def loss_auc(seen_loss: torch.Tensor, unseen_loss: torch.Tensor) -> float:
    """AUC of ``-loss`` as a score for "seen" (1) vs "never seen" (0): P(loss_seen < loss_unseen) + P(tie) / 2 over
    all pairs (the Mann-Whitney form of the ROC area, exact; torchmetrics' ``binary_auroc`` gives the same number but
    cost ~0.5 s a call on a loaded 2-core machine, more than the probes' forward passes)."""
    s, u = seen_loss.double()[:, None], unseen_loss.double()[None, :]
    return float(((s < u).double() + 0.5 * (s == u).double()).mean())


@torch.no_grad()
def classifier_scores(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, loss) per example: argmax of the (masked) logits equals ``y``; cross-entropy over the same logits."""
    correct, losses = [], []
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        logits = logits_fn(xb).float()
        if mask is not None:
            logits = logits.masked_fill(~mask.to(logits.device), torch.finfo(logits.dtype).min)
        correct.append((logits.argmax(1) == yb).cpu())
        losses.append(F.cross_entropy(logits, yb, reduction="none").cpu())
    return torch.cat(correct), torch.cat(losses)


@torch.no_grad()
def lm_scores(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, cue_fraction: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact_match, loss) per sequence for a Hugging Face causal LM.

    ``input_ids``/``attention_mask`` (N x L, right-padded). Recall: the first ``ceil(cue_fraction * n)`` tokens of a
    sequence of n tokens cue greedy decoding of the remaining ones, which must all equal the original. Loss: the mean
    next-token negative log-likelihood over the whole sequence (the recognition signal).
    """
    if not 0.0 < cue_fraction < 1.0:
        raise ValueError(f"cue_fraction={cue_fraction}; allowed: 0 < cue_fraction < 1")
    matches, losses = [], []
    for ids, att in zip(input_ids, attention_mask, strict=True):
        n = int(att.sum())
        seq = ids[:n].to(device)
        cue = max(1, min(n - 1, int(-(-cue_fraction * n // 1))))
        logits = model(seq[None]).logits[0].float()
        losses.append(F.cross_entropy(logits[:-1], seq[1:]).cpu())
        generated = seq[:cue]
        for _ in range(n - cue):  # greedy, one token at a time (no sampling, no generation config)
            nxt = model(generated[None]).logits[0, -1].argmax()
            generated = torch.cat([generated, nxt[None]])
        matches.append(torch.equal(generated, seq))
    return torch.tensor(matches), torch.stack(losses)


def geometric_points(growth: float, limit: int = 10**9) -> frozenset[int]:
    """Updates since exposure at which a geometric schedule evaluates: 0, 1 and round(growth^i), up to ``limit``."""
    if not growth > 1.0:
        raise ValueError(f"callbacks.retention.growth={growth}; allowed: a float > 1")
    points, value = {0, 1}, 1.0
    while value <= limit:
        value *= growth
        points.add(round(value))
    return frozenset(points)


def plot_retention(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Recall and recognition (2AFC) vs updates since exposure (log axis), one curve per experience; PNG, atomic.

    Rows may carry ``*_std`` columns (curves averaged over seeds): they are drawn as bands.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    experiences = sorted({int(r["experience"]) for r in rows})
    for e in experiences:
        own = sorted((r for r in rows if int(r["experience"]) == e), key=lambda r: int(r["updates_since_exposure"]))
        # log axis: exposure (0 updates) is drawn at 0.5
        u = [max(float(r["updates_since_exposure"]), 0.5) for r in own]
        for ax, key in zip(axes, ("recall", "recognition_2afc"), strict=True):
            y = [float(r[key]) for r in own]
            (line,) = ax.plot(u, y, marker=".", label=f"experience {e}")
            if own and f"{key}_std" in own[0]:
                s = [float(r[f"{key}_std"]) for r in own]
                ax.fill_between(
                    u, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)], alpha=0.15, color=line.get_color()
                )
    for ax, label in zip(axes, ("recall (accuracy on seen examples)", "recognition (2AFC, seen vs never seen)")):
        ax.set_xscale("log")
        ax.set_xlabel("optimizer updates since exposure (exposure at 0.5)")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.5, color="grey", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Retention of the examples of each experience", fontsize=10)
    fig.tight_layout()
    target = Path(path)
    write_with(target, lambda tmp: fig.savefig(tmp, format="png"))
    return target


def read_retention_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a run's ``retention.csv`` with numbers parsed."""
    import csv

    with open(path, newline="") as f:
        return [
            {k: (int(v) if k in COLUMNS[:3] else float(v)) for k, v in row.items() if k in COLUMNS}
            for row in csv.DictReader(f)
        ]


def write_mean_curves(run_dirs: Sequence[Path], out_dir: Path, name: str, title: str) -> list[Path]:
    """``retention_<name>.csv`` and ``.png`` in ``out_dir``: the mean curves (±std) of the runs that have a
    ``retention.csv``; nothing when none has."""
    import csv

    from cl.utils.atomic import write_text

    runs = [read_retention_csv(d / "retention.csv") for d in run_dirs if (d / "retention.csv").is_file()]
    rows = mean_curves(runs)
    if not rows:
        return []
    columns = ["experience", "updates_since_exposure", "n", *(f"{c}{s}" for c in COLUMNS[3:] for s in ("", "_std"))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / f"retention_{name}.csv", buf.getvalue())
    return [out_dir / f"retention_{name}.csv", plot_retention(rows, out_dir / f"retention_{name}.png", title=title)]


def mean_curves(runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Average the retention rows of several runs (seeds) point by point: (experience, updates since exposure) keys
    present in every run; each score gets its mean and its population std (``<score>_std``) and ``n`` runs."""
    if not runs:
        return []
    keyed = [{(int(r["experience"]), int(r["updates_since_exposure"])): r for r in rows} for rows in runs]
    common = set.intersection(*(set(k) for k in keyed))
    out = []
    for key in sorted(common):
        row: dict[str, Any] = {"experience": key[0], "updates_since_exposure": key[1], "n": len(runs)}
        for col in COLUMNS[3:]:
            vals = torch.tensor([float(k[key][col]) for k in keyed], dtype=torch.float64)
            row[col] = float(vals.mean())
            row[f"{col}_std"] = float(vals.std(unbiased=False))
        out.append(row)
    return out
