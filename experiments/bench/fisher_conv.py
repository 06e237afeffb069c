"""Benchmark: the per-sample Fisher's Conv2d rule, fused C++ (``kernels.fisher_cpp.conv``) vs the torch rule, and
where a checkpoint's per-sample importance pass spends its time.

    flock -w 600 -x /tmp/bench.lock python experiments/bench/fisher_conv.py --layers
    flock -w 600 -x /tmp/bench.lock python experiments/bench/fisher_conv.py \
        --checkpoint logs/studies/unlearn_native/cnn_small/train

``--layers``: every convolution shape of cnn_small and resnet18_reduced on digits (and grouped / depthwise ones),
batch 64, float32, one thread: thread CPU time of ``kernels.fisher_rules.conv2d_rule`` with and without the fused
module (minimum of ``--repeats`` interleaved calls). Cases the C++ rule leaves to the torch rule time the torch rule
twice.

``--checkpoint``: SSD's D for class 3 (``order=reference``, batch 64): thread CPU time of one plain forward + backward,
``kernels.fisher_diagonal`` per_sample and batch (interleaved rounds, minimum), then of each per-layer rule inside one
per-sample pass (the rules wrapped). Results: experiments/unlearn_native/README.md ("Speed against the physical limit").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {  # name: (C_in, C_out, kernel, stride, padding, groups, H = W)
    "cnn_small 1->32": (1, 32, 3, 1, 1, 1, 16),
    "cnn_small 32->64": (32, 64, 3, 1, 1, 1, 8),
    "resnet stem 1->64": (1, 64, 3, 1, 1, 1, 32),
    "resnet 64->20": (64, 20, 3, 1, 1, 1, 32),
    "resnet 64->20 1x1": (64, 20, 1, 1, 0, 1, 32),
    "resnet 20->20": (20, 20, 3, 1, 1, 1, 32),
    "resnet 20->40 s2": (20, 40, 3, 2, 1, 1, 32),
    "resnet 40->40": (40, 40, 3, 1, 1, 1, 16),
    "resnet 20->40 1x1 s2": (20, 40, 1, 2, 0, 1, 32),
    "resnet 40->80 s2": (40, 80, 3, 2, 1, 1, 16),
    "resnet 80->80": (80, 80, 3, 1, 1, 1, 8),
    "resnet 80->160 s2": (80, 160, 3, 2, 1, 1, 8),
    "resnet 160->160": (160, 160, 3, 1, 1, 1, 4),
    **{f"64->64 {og}/group {hw}x{hw}": (64, 64, 3, 1, 1, 64 // og, hw) for og in (1, 2, 4, 8) for hw in (8, 16)},
}


def layers(repeats: int) -> None:
    from kernels import fisher_cpp
    from kernels.fisher_rules import SqOps, conv2d_rule, vec_sqsum_torch

    ops = {"C++": SqOps(fisher_cpp.seq_sqsum, vec_sqsum_torch, None, fisher_cpp)}
    ops["torch"] = SqOps(fisher_cpp.seq_sqsum, vec_sqsum_torch, None, None)
    print("| conv | positions | C++ ms | torch ms | torch / C++ | C++ GMAC/s |\n|---|---|---|---|---|---|")
    for name, (cin, cout, k, s, p, groups, hw) in LAYERS.items():
        mod = nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False)
        x = torch.randn(64, cin, hw, hw)
        g = torch.randn_like(mod(x))
        acc = {"weight": torch.zeros_like(mod.weight)}
        t: dict[str, list[float]] = defaultdict(list)
        for _ in range(repeats):
            for n, o in ops.items():
                start = time.thread_time()
                conv2d_rule(mod, [x], [g], acc, o)
                t[n].append(time.thread_time() - start)
        c, tt = min(t["C++"]), min(t["torch"])
        macs = mod.weight.numel() * g.shape[2] * g.shape[3] * 64
        cells = [name, g.shape[2] * g.shape[3], f"{c * 1e3:.2f}", f"{tt * 1e3:.2f}", f"{tt / c:.1f}"]
        cells.append(f"{macs / c / 1e9:.0f}")
        print("| " + " | ".join(map(str, cells)) + " |")


def passes(checkpoint: str, repeats: int) -> None:
    import kernels.fisher_rules as rules

    sys.path.insert(0, str(ROOT / "experiments" / "bench"))
    from unlearn_ssd_calibrate import build_task

    from kernels import fisher_diagonal
    from unlearn.calibrate import class_task
    from unlearn.methods.ssd import ordered_pools

    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, rule):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.thread_time()
            out = rule(*args, **kwargs)
            spent[name] += time.thread_time() - start
            return out

        return wrapper

    task = class_task(build_task(checkpoint, 3), 3)
    model = task.ctx.method.eval()
    _, full = ordered_pools(task, "reference")
    batches = [(b[0], b[1]) for b in task.loader(full, batch_size=64)]

    def fwd(x: torch.Tensor) -> torch.Tensor:
        return task.logits(model, x)

    def plain() -> None:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(fwd(x), y).backward()
        model.zero_grad(set_to_none=True)

    variants = {"plain": plain}
    for mode in ("per_sample", "batch"):
        variants[mode] = lambda mode=mode: fisher_diagonal(model, batches, mode=mode, forward_fn=fwd)
    t: dict[str, list[float]] = defaultdict(list)
    for f in variants.values():
        f()
    for _ in range(repeats):
        for n, f in variants.items():
            start = time.thread_time()
            f()
            t[n].append(time.thread_time() - start)
    for n in variants:
        print(f"{n}: thread CPU min {min(t[n]):.4f} s, / plain {min(t[n]) / min(t['plain']):.2f}")
    for name in ("conv2d_rule", "batchnorm_rule", "linear_rule", "layernorm_rule"):
        setattr(rules, name, timed(name, getattr(rules, name)))
    start = time.thread_time()
    variants["per_sample"]()
    print(f"per_sample pass {time.thread_time() - start:.4f} s; rules:", {k: round(v, 4) for k, v in spent.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", action="store_true", help="the per-convolution table")
    ap.add_argument("--checkpoint", default=None, help="a run dir: where its per-sample pass spends its time")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if not args.layers and args.checkpoint is None:
        ap.error("give --layers and / or --checkpoint RUN_DIR")
    torch.set_num_threads(1)
    print("load", os.getloadavg())
    if args.layers:
        layers(args.repeats)
    if args.checkpoint:
        passes(args.checkpoint, args.repeats)
    print("load", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
