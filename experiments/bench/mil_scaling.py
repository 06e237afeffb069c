"""Forward + backward time and peak memory of GDAT (CoMEL's grouped double attention, 256 agents) against full
self-attention MIL (TransMIL-like, the N x N attention map materialised) for one bag of N instances, on CPU.

    flock -x /tmp/bench.lock python -m experiments.bench.mil_scaling --sizes 1000 10000 100000 --out OUT.json

Both models are :class:`cl.backbones.gdat.GDATMIL` with the reference's sizes (D = 1024 features in, 512 model, 2
blocks, 8 heads), in training mode (dropout on), differing only in ``attention`` (``gdat`` | ``full``); GDAT also runs
with ``checkpoint_blocks`` (``gdat_ckpt``) and with ``chunk_tokens=--chunk`` (``gdat_chunk``: per-instance work in
recomputed chunks, the agents' softmax merged over chunks; same function). Each (model, N) runs in its own process:
the peak is that process's ``ru_maxrss`` minus its resident size after building the model and the bag (so it is the
step's own memory), the time the median of ``--repeats`` steps after one warm-up step (``--repeats 0``: the one
step's time, warm-up included). A run predicted to exceed
``--limit-gib`` is not started and reported as not fitting: full attention by its attention maps alone (heads x N^2 x 4
bytes, one per layer kept for backward plus a map and its gradient in backward), unchunked GDAT by its bytes per
instance measured at N = 1e4. Results below.

Results (CPU, 1 thread, chunk 4096; peak = the step's own memory). Rows 1e3-1e4: 2026-12-03 21:57 UTC under the
exclusive bench lock on a quiet machine (load 0.8 before, 1.0 after), one process per cell:

    flock -x /tmp/bench.lock python -m experiments.bench.mil_scaling --sizes 1000 3000 10000 --threads 1 --repeats 1

Row 1e5: session 6, WITHOUT the lock at load 9-17 (only its peak is comparable):

    python -m experiments.bench.mil_scaling --sizes 100000 --threads 1 --repeats 0

| N | gdat | gdat_ckpt | gdat_chunk | full |
|---|---|---|---|---|
| 1e3 | 0.72 s, 0.16 GiB | 1.00 s, 0.30 GiB | 1.21 s, 0.31 GiB | 0.94 s, 0.28 GiB |
| 3e3 | 2.63 s, 0.47 GiB | 3.52 s, 0.54 GiB | 3.86 s, 0.61 GiB | 4.70 s, 1.51 GiB |
| 1e4 | 8.64 s, 1.52 GiB | 10.7 s, 1.28 GiB | 13.0 s, **0.72 GiB** | not run: predicted 12 GiB |
| 1e5 | not run: predicted 14 GiB | not run: predicted 12 GiB | 1010 s (c), **3.42 GiB** | not run: predicted 1192 GiB |

GDAT's time grows linearly (2.6 s -> 8.6 s from 3e3 to 1e4, 3.3x for 3.3x the instances); full attention's grows
faster (0.94 -> 4.70 s from 1e3 to 3e3, 5x for 3x) and its peak quadratically (0.28 -> 1.51 GiB).
(c) one step,
about 2.5 min of CPU time over 17 min wall at load 9-17 (uptime 18:37 -> 18:54 UTC).

Unchunked GDAT's memory grows linearly (0.15 GiB per 1e3 instances: ~14 GiB at 1e5); its saved activations at 1e4 are
1.0 GiB, 57 % of it the MLP's N x 4 dim tensors (fc1 output, dropout's float mask, fc2 input); ``checkpoint_blocks``
saves little (a block's recomputed activations are all alive in its backward). ``chunk_tokens`` keeps a few N x dim
tensors (block inputs and outputs, their gradients) plus one chunk's activations. Full attention's peak follows
128 N^2 bytes (4 maps of 8 heads) plus GDAT's linear part: it passes 8 GiB at N ~ 7.6e3.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

HEADS, DEPTH, IN_DIM, DIM = 8, 2, 1024, 512


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def child(model: str, n: int, repeats: int, threads: int, chunk: int) -> dict[str, float]:
    import torch

    from cl.backbones.gdat import GDATMIL

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    attention = "full" if model == "full" else "gdat"
    net = GDATMIL(
        IN_DIM,
        DIM,
        DEPTH,
        HEADS,
        attention=attention,
        checkpoint_blocks=model == "gdat_ckpt",
        chunk_tokens=chunk if model == "gdat_chunk" else None,
    ).train()
    x = torch.randn(1, n, IN_DIM)
    base = _rss_bytes()
    times = []
    for _ in range(repeats + 1):
        net.zero_grad(set_to_none=True)
        start = time.perf_counter()
        net(x).square().sum().backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"seconds": statistics.median(times[1:] or times), "peak_gib": max(peak - base, 0) / 2**30}


# bytes per instance of the unchunked GDAT step, measured at N = 1e4 (table below), to skip runs that cannot fit
LINEAR_BYTES = {"gdat": 1.54e5, "gdat_ckpt": 1.27e5}


def predicted_gib(model: str, n: int) -> float:
    """Full attention: its attention maps alone (heads x N^2 x 4 bytes, kept for backward in each layer, plus the map
    and its gradient in backward); unchunked GDAT: the measured bytes per instance; chunked GDAT: 0 (always run)."""
    if model == "full":
        return HEADS * n * n * 4 * (DEPTH + 2) / 2**30
    return LINEAR_BYTES.get(model, 0.0) * n / 2**30


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--models", nargs="+", default=["gdat", "gdat_ckpt", "gdat_chunk", "full"])
    parser.add_argument("--chunk", type=int, default=4096, help="backbone.chunk_tokens of gdat_chunk")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-gib", type=float, default=8.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.repeats, args.threads, args.chunk)))
        return
    rows = []
    for n in args.sizes:
        for model in args.models:
            row: dict[str, object] = {"model": model, "N": n}
            if predicted_gib(model, n) > args.limit_gib:
                row.update(fits=False, note=f"predicted {predicted_gib(model, n):.0f} GiB > {args.limit_gib}: not run")
            else:
                cmd = [sys.executable, "-m", "experiments.bench.mil_scaling", "--child", model, str(n)]
                cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads), "--chunk", str(args.chunk)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    row.update(fits=False, note=f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}")
                else:
                    row.update(fits=True, **json.loads(proc.stdout.strip().splitlines()[-1]))
                    row["fits"] = row["peak_gib"] <= args.limit_gib
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
