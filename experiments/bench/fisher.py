"""Benchmark: exact per-sample Fisher diagonal (``kernels.fisher_diagonal``) against one plain training pass.

For each model (tiny ViT, reduced ResNet-18 for 32x32, MLP), thread count and the same N samples, reports the time of
  train      one training forward + backward (model.train(), mean cross-entropy, loss.backward()) over the N samples,
  fast       fisher_diagonal(mode="per_sample", backend="fast") (exact; the goal is <= 1.25x train on CPU; rules on
             threads - 1 worker threads by default, ``--rule-workers`` to compare, see ``kernels.fisher_pool``),
  batch      fisher_diagonal(mode="batch") (squared batch-mean gradient, the SSD reference / Avalanche quantity),
  torch.func fisher_diagonal(backend="reference") (vmap(grad) per-sample gradients; timed on the first
             --func-samples samples, scaled to N),
  naive      a per-sample autograd loop (timed on --naive-samples samples, scaled to N),
each as a ratio to ``train``: one warm-up round, then --repeats interleaved rounds (train, fast, ... in turn), the
median. Peak memory: the resident-set high-water mark above the level before the call (VmHWM reset through
/proc/self/clear_refs before each call; on CUDA the allocator's peak), the median over the timed rounds, the same
method for every column (goal for fast: <= 1.5x train). Each (model, threads) runs in its own worker process. The
ResNet's BatchNorm statistics and affine parameters are randomised (timm zero-initialises the last BatchNorm of each
block, which would give zero gradients in eval mode). Random data; nothing is downloaded. Not a test. On a shared
machine run it under the benchmark lock, e.g. ``flock /tmp/bench.lock python experiments/bench/fisher.py --models
resnet --samples 128``; the load average is printed with every row. ``--device cuda`` times the Triton-dispatched path
on a GPU (run ``pytest -m gpu tests/kernels`` first to check the kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("vit", "resnet", "mlp")
SAMPLES = {"vit": 256, "resnet": 128, "mlp": 2048}  # default N per model: a few minutes in all on one shared core
METHODS = ("train", "fast", "batch", "torch.func", "naive")


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
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
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
    n_func = min(args.func_samples, args.samples)
    func_batches = [
        (x[i : min(i + args.batch, n_func)], y[i : min(i + args.batch, n_func)]) for i in range(0, n_func, args.batch)
    ]
    scale = {"naive": args.samples / args.naive_samples, "torch.func": args.samples / n_func}

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
        "fast": lambda: fisher_diagonal(model, batches, backend="fast", rule_workers=args.rule_workers),
        "batch": lambda: fisher_diagonal(model, batches, mode="batch"),
        "torch.func": lambda: fisher_diagonal(model, func_batches, backend="reference", chunk=args.func_chunk),
        "naive": naive,
    }
    methods = [m for m in METHODS if m in args.methods]
    times: dict[str, list[float]] = {m: [] for m in methods}
    peaks: dict[str, list[float]] = {m: [] for m in methods}
    load0 = os.getloadavg()[0]
    for rep in range(args.repeats + 1):  # interleaved; round 0 is a warm-up
        for m in methods:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated() / 1024
            else:
                Path("/proc/self/clear_refs").write_text("5")
                base = _rss_kib("VmRSS")
            t0 = time.perf_counter()
            runs[m]()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            top = torch.cuda.max_memory_allocated() / 1024 if cuda else _rss_kib("VmHWM")
            if rep > 0:
                times[m].append(dt * scale.get(m, 1.0))
                peaks[m].append((top - base) / 1024)
    fast = fisher_diagonal(model, batches, backend="fast", rule_workers=args.rule_workers)
    check_batches = batches[:1]
    ref = fisher_diagonal(model, check_batches, backend="reference", chunk=args.func_chunk)
    one = fisher_diagonal(model, check_batches, backend="fast")
    err = max(float((one.diag[n] - ref.diag[n]).norm() / ref.diag[n].norm().clamp_min(1e-30)) for n in ref.diag)
    return {
        "model": args.model,
        "threads": args.threads,
        "samples": args.samples,
        "times": {m: statistics.median(v) for m, v in times.items()},
        "all_times": times,
        "peak_mib": {m: statistics.median(v) for m, v in peaks.items()},
        "fallback": list(fast.fallback),
        "max_rel_err": err,
        "load": [load0, os.getloadavg()[0]],
    }


def _worker_cmd(args: argparse.Namespace, model: str, threads: int) -> list[str]:
    cmd = [sys.executable, __file__, "--model", model, "--threads", str(threads), "--methods", *args.methods]
    cmd += ["--samples", str(args.samples or SAMPLES[model])]
    for key in ("batch", "naive_samples", "func_samples", "func_chunk", "device", "repeats", "rule_workers"):
        if getattr(args, key) is not None:
            cmd += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return cmd


def _print_table(rows: list[dict], args: argparse.Namespace) -> None:
    others = [m for m in args.methods if m != "train"]
    print(f"batch={args.batch} repeats={args.repeats} (median); ratios to train (time | peak memory)")
    head = "".join(f"{m:>11s}" for m in others)
    print(f"{'model':7s}{'N':>5s}{'thr':>4s}{head}  |{head}  {'train_s':>8s}{'train_MiB':>10s}{'rel_err':>9s}  load")
    for r in rows:
        t, p = r["times"], r["peak_mib"]
        tc = "".join(f"{t[m] / t['train']:10.2f}x" for m in others)
        pc = "".join(f"{p[m] / max(p['train'], 1e-9):10.2f}x" for m in others)
        load = f"{r['load'][0]:.1f}->{r['load'][1]:.1f}"
        err = r["max_rel_err"]
        tail = f"{t['train']:8.2f}{p['train']:10.0f}{err:9.1e}  {load}"
        print(f"{r['model']:7s}{r['samples']:5d}{r['threads']:4d}{tc}  |{pc}  {tail}")
        if r["fallback"]:
            print(f"  reference fallback for: {r['fallback']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--samples", type=int, help=f"N (default per model: {SAMPLES})")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--naive-samples", type=int, default=32, help="the naive loop is timed on this many, scaled to N")
    ap.add_argument("--func-samples", type=int, default=256, help="torch.func is timed on this many, scaled to N")
    ap.add_argument("--func-chunk", type=int, default=16, help="samples per vmap call of the torch.func reference")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="one worker per model and thread count")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to time the Triton-dispatched path on a GPU")
    ap.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds after one warm-up round")
    ap.add_argument("--rule-workers", type=int, help="fisher_diagonal(rule_workers=...) for fast (default: auto)")
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if "train" not in args.methods:
        args.methods = ["train", *args.methods]
    if args.model:
        args.threads = args.threads[0]
        print(json.dumps(_worker(args)))
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    rows = []
    for name in args.models:
        for threads in args.threads:
            out = subprocess.run(_worker_cmd(args, name, threads), env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"worker {name} threads={threads} failed:\n{out.stderr[-4000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    _print_table(rows, args)
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
