"""Calibrate SSD's alpha / lambda on one checkpoint: importances are computed once, then every grid point is a cheap
dampening of a copy of the model, scored on the test split (forget-test accuracy vs retain-test accuracy).

    python experiments/bench/unlearn_ssd_calibrate.py --checkpoint RUN_DIR --classes 0,5 --mode per_sample

Use forget classes *other* than the ones you report on (a held-out calibration split). Prints one line per grid point:
mode, alpha (or alpha_relative), lambda, selected fraction, retain-test and forget-test accuracy, averaged over the
given classes, then per class. ``--labels sampled`` uses the true Fisher (labels drawn from the model, seeded) instead
of the empirical one.
"""

from __future__ import annotations

import argparse
import copy
import sys

GRID = {
    "batch": [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0],
    "per_sample": [0.2, 0.4, 0.6, 0.8, 0.85, 0.9, 0.95, 0.98],
}


def main(argv: list[str] | None = None) -> int:
    import torch

    from kernels import fisher_diagonal
    from unlearn.context import load_context
    from unlearn.data import PoolDataset
    from unlearn.evaluate import class_masks, forward_pool
    from unlearn.forget import ClassForget, SeenData, make_split
    from unlearn.methods.ssd import dampen

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--classes", default="0,5")
    ap.add_argument("--mode", default="per_sample", choices=sorted(GRID))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lambdas", default="1.0,0.1")
    ap.add_argument("--labels", default="true", choices=["true", "sampled"], help="empirical | true Fisher")
    ap.add_argument("--grid", default=None, help="comma-separated alphas (alpha_relative for per_sample)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ctx = load_context(args.checkpoint)
    model, mask, stream = ctx.method.eval(), ctx.method.seen_classes.clone(), ctx.stream
    seen = SeenData(stream, ctx.experience)

    def logits(m, x):  # noqa: ANN001, ANN202
        out = m(x)
        return out.masked_fill(~mask, torch.finfo(out.dtype).min)

    full = PoolDataset(stream, seen.train_keys, "train")
    loader = torch.utils.data.DataLoader(full, batch_size=args.batch_size, shuffle=True)

    def importance(data):  # noqa: ANN001, ANN202 - SSD's importance, with the label mode of --labels
        gen = torch.Generator().manual_seed(0)
        fn = lambda x: logits(model, x)  # noqa: E731
        return fisher_diagonal(model, data, mode=args.mode, labels=args.labels, forward_fn=fn, generator=gen).diag

    imp_d = importance(loader)
    masks = class_masks(model, stream)
    results: dict[tuple[float, float], list[tuple[float, float, float]]] = {}
    for c in (int(v) for v in args.classes.split(",")):
        split = make_split(ClassForget([c]), seen)
        forget = PoolDataset(stream, split.forget_train, "train")
        imp_f = importance(torch.utils.data.DataLoader(forget, batch_size=args.batch_size))
        ratio = len(full) / len(forget)
        pools = [PoolDataset(stream, split.retain_test, "test"), PoolDataset(stream, split.forget_test, "test")]
        accs0 = [
            float((o["pred"] == o["y"]).mean())
            for o in (forward_pool(model, p, masks, "cpu", 512, False) for p in pools)
        ]
        print(f"class {c}: original retain_test={accs0[0]:.3f} forget_test={accs0[1]:.3f}", flush=True)
        for a in [float(v) for v in args.grid.split(",")] if args.grid else GRID[args.mode]:
            alpha = a * ratio if args.mode == "per_sample" else a
            for lam in (float(v) for v in args.lambdas.split(",")):
                m = copy.deepcopy(model)
                n = dampen(m, imp_f, imp_d, alpha, lam)
                accs = [
                    float((o["pred"] == o["y"]).mean())
                    for o in (forward_pool(m, p, masks, "cpu", 512, False) for p in pools)
                ]
                total = sum(v.numel() for v in imp_f.values())
                results.setdefault((a, lam), []).append((n / total, *accs))
    print(
        f"mode={args.mode} labels={args.labels} classes={args.classes}  (alpha column: alpha_relative for per_sample)"
    )
    for (a, lam), vals in results.items():
        sel, ret, fgt = (sum(v[i] for v in vals) / len(vals) for i in range(3))
        per_class = " ".join(f"{v[1]:.2f}/{v[2]:.2f}" for v in vals)
        print(
            f"alpha={a:<6} lambda={lam:<5} selected={sel:.5f} retain_test={ret:.3f} forget_test={fgt:.3f}"
            f"  per class (retain/forget): {per_class}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
