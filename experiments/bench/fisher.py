"""Benchmark: exact per-sample Fisher diagonal (``kernels.fisher_diagonal``) against one plain training pass.

For each model (tiny ViT, reduced ResNet-18 for 32x32, MLP) and the same N samples, reports the time of
  train      one training forward + backward (model.train(), mean cross-entropy, loss.backward()) over the N samples,
  fast       fisher_diagonal(mode="per_sample", backend="fast"),
  torch.func fisher_diagonal(backend="reference") (vmap(grad) per-sample gradients),
  naive      a per-sample autograd loop (timed on --naive-samples samples, scaled to N),
each as a ratio to ``train`` (goal for fast: <= 1.25), and the peak resident memory above the baseline of the worker
process (goal for fast: <= 1.5x train). Each model runs in its own worker process (fresh allocator, VmHWM reset via
/proc/self/clear_refs; on CUDA the allocator's peak). Random data; nothing is downloaded. Not a test:
``python experiments/bench/fisher.py`` (CPU), ``python experiments/bench/fisher.py --device cuda`` (GPU: fast uses the
Triton kernels for Linear layers; run ``pytest -m gpu tests/kernels`` first to check them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("vit", "resnet", "mlp")
METHODS = ("train", "fast", "torch.func", "naive")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _build(name: str, classes: int = 10):  # noqa: ANN202
    import timm
    from torch import nn

    if name == "vit":
        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3,
            num_classes=classes,
        )  # fmt: skip
        shape = (3, 32, 32)
    elif name == "resnet":
        model = timm.create_model("resnet18", pretrained=False, num_classes=classes)
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        shape = (3, 32, 32)
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                              nn.Linear(1024, classes))  # fmt: skip
        shape = (3, 32, 32)
    return model, shape


def _worker(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from kernels import fisher_diagonal

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model, shape = _build(args.model)
    model.to(device)
    x = torch.randn(args.samples, *shape, device=device)
    y = torch.randint(0, 10, (args.samples,), device=device)
    batches = [(x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, args.samples, args.batch)]

    def train() -> None:
        model.train()
        for xb, yb in batches:
            F.cross_entropy(model(xb), yb).backward()
        model.zero_grad(set_to_none=True)

    def naive() -> None:
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        acc = [torch.zeros_like(p) for p in params]
        for i in range(args.naive_samples):
            grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
            for a, g in zip(acc, grads):
                a.add_(g.square())

    runs = {
        "train": train,
        "fast": lambda: fisher_diagonal(model, batches, backend="fast"),
        "torch.func": lambda: fisher_diagonal(model, batches, backend="reference", chunk=args.func_chunk),
        "naive": naive,
    }
    methods = [m for m in METHODS if m in args.methods]
    times: dict[str, float] = {m: float("inf") for m in methods}
    peak: dict[str, float] = {}
    for rep in range(args.repeats + 1):  # interleaved; rep 0 is a warm-up that also records the peak memory
        for m in methods:
            if rep == 0 and cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated() / 1024
            elif rep == 0:
                Path("/proc/self/clear_refs").write_text("5")
                base = _rss_kib("VmRSS")
            t0 = time.perf_counter()
            runs[m]()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if rep == 0:
                top = torch.cuda.max_memory_allocated() / 1024 if cuda else _rss_kib("VmHWM")
                peak[m] = (top - base) / 1024
            else:
                times[m] = min(times[m], dt * (args.samples / args.naive_samples if m == "naive" else 1.0))
    fast = fisher_diagonal(model, batches, backend="fast")
    check_batches = batches[:1]
    ref = fisher_diagonal(model, check_batches, backend="reference", chunk=args.func_chunk)
    one = fisher_diagonal(model, check_batches, backend="fast")
    err = max(float((one.diag[n] - ref.diag[n]).norm() / ref.diag[n].norm().clamp_min(1e-30)) for n in ref.diag)
    return {"model": args.model, "times": times, "peak_mib": peak, "fallback": list(fast.fallback), "max_rel_err": err}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--naive-samples", type=int, default=32, help="the naive loop is timed on this many, scaled to N")
    ap.add_argument("--func-chunk", type=int, default=16, help="samples per vmap call of the torch.func reference")
    ap.add_argument(
        "--threads", type=int, default=1, help="1 on a shared machine: OpenMP spin-waits ruin many-small-op timings"
    )
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to time the Triton-dispatched path on a GPU")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if args.model:
        print(json.dumps(_worker(args)))
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    rows = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--model", name, *sys.argv[1:]]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"N={args.samples} batch={args.batch} threads={args.threads}; time and peak memory relative to train")
    print(f"{'model':8s}" + "".join(f"{m:>14s}" for m in args.methods) + "   train_s  train_MiB  fast_MiB  rel_err")
    for r in rows:
        t, p = r["times"], r["peak_mib"]
        cells = "".join(f"{t[m] / t['train']:13.2f}x" for m in args.methods)
        fast_mib = p.get("fast", float("nan"))
        print(f"{r['model']:8s}{cells}   {t['train']:7.2f}  {p['train']:9.0f}  {fast_mib:8.0f}  {r['max_rel_err']:.1e}")
        if r["fallback"]:
            print(f"  reference fallback for: {r['fallback']}")
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
