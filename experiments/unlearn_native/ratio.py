"""Where SSD's selection ratio ``r = I_f / I_D`` lies for the weights that serve the forgotten class and for the rest.

    python experiments/unlearn_native/ratio.py --checkpoint logs/studies/unlearn_native/cnn_small/train \
        --classes 0,1,2,3,4,5,6,7,8,9 [--layers 3]

For each forgotten class ``c`` the importances are SSD's own (``unlearn.methods.ssd.SSD.importances``: batch mode,
batch 64, the reference code's batch order: D = the retain set grouped by class, then the forget set), on the
checkpoint's training data. SSD selects weight i iff ``r_i > alpha`` (Foster et al., arXiv 2308.07707, eq. 3). Printed
per class (markdown): the ceiling ``n_b(D) / n_b(D_f)`` (batches of D over batches of D_f; in the reference order D
ends with the forget set's own batches, so ``I_D >= I_f * n_b(D_f) / n_b(D)`` up to the batch alignment and no
weight's ratio can exceed it by much), the whole model's ratio ``sum I_f / sum I_D`` (how much of the training
loss gradient the class carries: near the ceiling when the model fits every other class almost perfectly, near 0 when
it fits this class best), the largest ratio, the ratio of the forgotten class's head row (weights and
bias: the weights that serve only that class) as min / median, the 99th and 99.9th percentile over every other
weight ("shared": the feature layers and the other head rows), and the fraction of shared weights and of the head row
above alpha for a few alphas. ``--layers N``: also the per-layer quantiles for the first N classes.
Results: experiments/unlearn_native/README.md ("Why SSD fails here").
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
ALPHAS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0)


def head_name(model: torch.nn.Module, n_classes: int) -> str:
    """The prefix of the last parameter pair whose weight has ``n_classes`` rows (the classifier head)."""
    names = [
        n for n, p in model.named_parameters() if n.endswith(".weight") and p.shape[0] == n_classes and p.dim() == 2
    ]
    if not names:
        raise ValueError(f"no Linear head with {n_classes} rows among the model's parameters")
    return names[-1][: -len(".weight")]


def ratios(imp_f: dict, imp_d: dict, head: str, c: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(r of the head row of c, r of every other weight, r per parameter tensor)``."""
    tiny = torch.finfo(torch.float32).tiny
    per = {n: (imp_f[n].float() / imp_d[n].float().clamp_min(tiny)) for n in imp_f}
    row = torch.cat([per[f"{head}.weight"][c].flatten(), per[f"{head}.bias"][c : c + 1]])
    rest = []
    for n, r in per.items():
        if n in (f"{head}.weight", f"{head}.bias"):
            keep = torch.ones(r.shape[0], dtype=torch.bool)
            keep[c] = False
            rest.append(r[keep].flatten())
        else:
            rest.append(r.flatten())
    return row, torch.cat(rest), per


def quantile(x: torch.Tensor, q: float) -> float:
    return (
        float(torch.quantile(x.double(), q)) if x.numel() <= 16_000_000 else float(x.kthvalue(int(q * len(x))).values)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--layers", type=int, default=0, help="per-layer quantiles for the first N classes")
    ap.add_argument("--drop-last", action="store_true", help="SSD's drop_last=true: no trailing partial batch")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "experiments" / "bench"))
    from unlearn_ssd_calibrate import build_task

    from unlearn.calibrate import class_task
    from unlearn.methods.ssd import SSD, ordered_pools

    classes = [int(v) for v in args.classes.split(",")]
    task = build_task(args.checkpoint, classes[0])
    model = task.ctx.method.to(task.device).eval()
    n_classes = int(task.ctx.stream.num_classes)
    head = head_name(model, n_classes)
    method = SSD(order="reference", drop_last=args.drop_last)
    alphas = " | ".join(f"a={a:g}: shared / row" for a in ALPHAS)
    print(f"{args.checkpoint}: {n_classes} classes, head `{head}`, |D| = {len(task.full)}\n")
    print(f"| class | ceiling | whole model | max r | row min / median | shared p99 / p99.9 | {alphas} |")
    print("|---" * (6 + len(ALPHAS)) + "|")
    layer_rows = []
    for i, c in enumerate(classes):
        sub = class_task(task, c)
        imp_f, imp_d, _ = method.importances(model, sub)
        forget, full = ordered_pools(sub, "reference")
        count = (lambda n: n // method.batch_size) if args.drop_last else (lambda n: math.ceil(n / method.batch_size))
        ceiling = count(len(full)) / count(len(forget))
        row, rest, per = ratios(imp_f, imp_d, head, c)
        top = max(float(row.max()), float(rest.max()))
        whole = float(sum(v.sum() for v in imp_f.values()) / sum(v.sum() for v in imp_d.values()))
        fr = " | ".join(
            f"{100 * float((rest > a).float().mean()):.2f} % / {100 * float((row > a).float().mean()):.0f} %"
            for a in ALPHAS
        )
        print(
            f"| {c} | {ceiling:.1f} | {whole:.2f} | {top:.1f} | {float(row.min()):.2f} / {float(row.median()):.2f} | "
            f"{quantile(rest, 0.99):.2f} / {quantile(rest, 0.999):.2f} | {fr} |",
            flush=True,
        )
        if i < args.layers:
            for n, r in per.items():
                x = r.flatten()
                qs = " / ".join(f"{quantile(x, q):.2f}" for q in (0.5, 0.9, 0.99))
                layer_rows.append(f"| {c} | `{n}` | {x.numel()} | {qs} | {float(x.max()):.2f} |")
    if layer_rows:
        print("\n| class | parameter | entries | r median / p90 / p99 | max |\n|---|---|---|---|---|")
        print("\n".join(layer_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
