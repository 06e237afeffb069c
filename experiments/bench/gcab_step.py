"""Training-step time of ``method=gcab`` against ``finetune`` on the same trunk (the digits tiny ViT: 16x16 input,
4x4 patches, dim 96, depth 4, 3 heads), batch 32, at experience 2 of 5 (GCAB: 3 task tokens, the teacher trunk and
the drift loss), measured side by side in alternating rounds (median over rounds of the mean step time)::

    uptime; flock -x /tmp/bench.lock python -m experiments.bench.gcab_step; uptime

Measured 2026-12-03 (CPU, 1 thread, --rounds 5 --steps 10, shared machine at load average ~3, no lock): finetune
70.7 ms, gcab 99.2 ms per step, ratio 1.40 (earlier, at load ~9 with 3 rounds of 5 steps: 1.56). The extra: the
teacher trunk's forward, the projector, 3 task tokens through the class-attention block.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch.utils.data import TensorDataset

from cl.backbones import Backbone
from cl.data.stream import Experience, Stream
from cl.methods.finetune import Finetune
from cl.methods.gcab import GCAB


def _stream() -> Stream:
    exps = []
    for i in range(5):
        x, y = torch.randn(64, 1, 16, 16), torch.tensor([2 * i + (k % 2) for k in range(64)])
        ds = TensorDataset(x, y)
        ds.targets = y.tolist()
        exps.append(Experience(i, [2 * i, 2 * i + 1], 0, ds, ds))
    return Stream("class", exps, 10, list(range(10)), None)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = _stream()
    runs = {}
    for name, cls in (("finetune", Finetune), ("gcab", GCAB)):
        torch.manual_seed(0)
        bb = Backbone("vit_tiny_patch16_224", in_chans=1, img_size=16, patch_size=4, embed_dim=96, depth=4, num_heads=3)
        m = cls(bb, 10, partial(torch.optim.AdamW, lr=1e-3))
        m.setup_stream(s)
        for e in s.experiences[:3]:
            m.on_experience_start(e)
        m._s = 10.0
        opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-3)
        x, y = s.experiences[2].train.tensors
        runs[name] = (m, opt, x[:32], y[:32])

    def steps(name: str) -> float:
        m, opt, x, y = runs[name]
        t = time.perf_counter()
        for _ in range(args.steps):
            opt.zero_grad()
            m.compute_loss(x, y, None).backward()
            m.on_after_backward()
            opt.step()
        return (time.perf_counter() - t) / args.steps

    for name in runs:
        steps(name)  # warm-up
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name in runs:
            times[name].append(steps(name))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    ratio = med["gcab"] / med["finetune"]
    print(f"finetune {med['finetune']:.1f} ms/step  gcab {med['gcab']:.1f} ms/step  ratio gcab/finetune {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
