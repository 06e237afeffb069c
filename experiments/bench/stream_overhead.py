"""Engine overhead: training time of ``cl.run``'s stream engine vs a hand-written PyTorch loop doing the same training.

Same model (small CNN), same data (the digits class-incremental stream, 5 experiences of 2 classes), same optimizer
(Adam 1e-3), same masked cross-entropy, 2 epochs per experience, batch 32, same DataLoaders; evaluation is excluded
from both (the engine's ``train_seconds`` counts fit + the method's end-of-experience hook, which is empty for
finetune). Both run in this process, interleaved over ``--repeats`` rounds, and the median ratio is reported.

    python experiments/bench/stream_overhead.py [--repeats 3] [--progress-bar] [--no-flops] [--threads 1]

The engine counts training FLOPs by default (``callbacks.flops``, a TorchDispatchMode over every op); ``--no-flops``
measures the engine without it (``callbacks.flops=null``), which is what the hand-written loop does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HOME", tempfile.mkdtemp())
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tests.helpers import compose_config  # noqa: E402

OVERRIDES = ["backbone=cnn_small", "method=finetune", "trainer.max_epochs=2", "data.batch_size=32", "logger=none"]


def engine_seconds(progress_bar: bool, flops: bool = True) -> float:
    from cl.engine.loop import StreamRunner
    from cl.experiment import build

    with tempfile.TemporaryDirectory() as tmp:
        extra = [f"trainer.enable_progress_bar={progress_bar}"] + ([] if flops else ["callbacks.flops=null"])
        cfg = compose_config(OVERRIDES + extra, Path(tmp), shrink=False)
        stream, method = build(cfg)
        runner = StreamRunner(cfg, method, stream, Path(tmp))
        runner.evaluate = lambda: ([0.0] * len(stream), [0.0] * len(stream))  # evaluation excluded
        runner.run()
        return runner.train_seconds


def hand_loop_seconds() -> float:
    from cl.engine.loop import StreamRunner
    from cl.experiment import build

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(OVERRIDES, Path(tmp), shrink=False)
        stream, method = build(cfg)
        loaders = StreamRunner(cfg, method, stream, Path(tmp))
        seen = torch.zeros(stream.num_classes, dtype=torch.bool)
        total = 0.0
        for t, exp in enumerate(stream.experiences):
            torch.manual_seed(t)
            seen[exp.classes] = True
            loader = loaders.train_loader(exp.train, t)
            opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
            method.train()
            start = time.perf_counter()
            for _ in range(2):
                for x, y in loader:
                    logits = method(x).masked_fill(~seen, torch.finfo(torch.float32).min)
                    loss = F.cross_entropy(logits, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            total += time.perf_counter() - start
        return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--progress-bar", action="store_true", help="keep the engine's progress bar on")
    parser.add_argument("--no-flops", action="store_true", help="turn the engine's FLOP counter off")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flops = not args.no_flops
    engine_seconds(args.progress_bar, flops), hand_loop_seconds()  # warm-up (imports, allocator, first-call costs)
    eng, hand = [], []
    for _ in range(args.repeats):
        eng.append(engine_seconds(args.progress_bar, flops))
        hand.append(hand_loop_seconds())
    e, h = statistics.median(eng), statistics.median(hand)
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} progress_bar={args.progress_bar} flops={flops}")
    print(f"hand-written loop: {h:.3f} s  (runs: {', '.join(f'{v:.3f}' for v in hand)})")
    print(f"cl engine:         {e:.3f} s  (runs: {', '.join(f'{v:.3f}' for v in eng)})")
    print(f"ratio engine/hand: {e / h:.3f}x")


if __name__ == "__main__":
    main()
