"""Engine overhead: training time of ``cl.run``'s stream engine vs a hand-written PyTorch loop doing the same training.

Same model (small CNN), same data (the digits class-incremental stream, 5 experiences of 2 classes), same optimizer
(Adam 1e-3), same masked cross-entropy, 2 epochs per experience, batch 32, same DataLoaders; evaluation is excluded
from both (the engine's ``train_seconds`` counts fit + the method's end-of-experience hook, which is empty for
finetune). Both run in this process, interleaved over ``--repeats`` rounds (the order alternates between rounds, so a
load that drifts on a shared machine biases neither side), and the median ratio is reported, for wall-clock time (the
goal) and for the process's CPU time (less sensitive to other processes on the machine).

    python experiments/bench/stream_overhead.py [--repeats 5] [--progress-bar] [--no-flops] [--threads 1] [--bare]

``--bare`` also times a bare Lightning ``Trainer`` per experience (no callbacks, no logger) fitting the same method:
the floor of an engine that calls ``Trainer.fit`` once per experience.

What the engine does on top of the hand-written loop, by default: Lightning's fit (one Trainer per experience: setup,
hooks around every step, teardown), the FLOP counter (``callbacks.flops``, mode ``cached``: each kind of step traced
once per experience, see cl/callbacks/flops.py; ``--no-flops`` sets ``callbacks.flops=null``), and the
parameters-updated count. Not here: the per-step CSV log (``logger=none`` on the engine side; the hand loop logs
nothing either) and the progress bar (off unless ``--progress-bar``; redrawn at most 10 times a second).
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


def engine_seconds(progress_bar: bool, flops: bool = True) -> tuple[float, float]:
    """(wall, CPU) seconds of the engine's training over the stream."""
    from cl.engine.loop import StreamRunner
    from cl.experiment import build

    with tempfile.TemporaryDirectory() as tmp:
        extra = [f"trainer.enable_progress_bar={progress_bar}"] + ([] if flops else ["callbacks.flops=null"])
        cfg = compose_config(OVERRIDES + extra, Path(tmp), shrink=False)
        stream, method = build(cfg)
        runner = StreamRunner(cfg, method, stream, Path(tmp))
        runner.evaluate = lambda: ([0.0] * len(stream), [0.0] * len(stream))  # evaluation excluded
        runner.run()
        return runner.train_seconds, runner.train_cpu_seconds


def hand_loop_seconds() -> tuple[float, float]:
    """(wall, CPU) seconds of the hand-written loop's training over the stream."""
    from cl.engine.loop import StreamRunner
    from cl.experiment import build

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(OVERRIDES, Path(tmp), shrink=False)
        stream, method = build(cfg)
        loaders = StreamRunner(cfg, method, stream, Path(tmp))
        seen = torch.zeros(stream.num_classes, dtype=torch.bool)
        total = cpu = 0.0
        for t, exp in enumerate(stream.experiences):
            torch.manual_seed(t)
            seen[exp.classes] = True
            loader = loaders.train_loader(exp.train, t)
            opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
            method.train()
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(2):
                for x, y in loader:
                    logits = method(x).masked_fill(~seen, torch.finfo(torch.float32).min)
                    loss = F.cross_entropy(logits, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            total += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
        return total, cpu


def bare_lightning_seconds() -> tuple[float, float]:
    """(wall, CPU) seconds of a bare Lightning Trainer per experience (no callbacks, logger, progress bar) fitting the
    same method: the floor of any engine built on one ``Trainer.fit`` per experience."""
    import lightning as L

    from cl.engine.loop import StreamRunner
    from cl.experiment import build

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(OVERRIDES, Path(tmp), shrink=False)
        stream, method = build(cfg)
        loaders = StreamRunner(cfg, method, stream, Path(tmp))
        method.setup_stream(stream)
        total = cpu = 0.0
        for t, exp in enumerate(stream.experiences):
            torch.manual_seed(t)
            method.on_experience_start(exp)
            loader = loaders.train_loader(exp.train, t)
            trainer = L.Trainer(
                accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp,
            )  # fmt: skip
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer.fit(method, train_dataloaders=loader)
            total += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
        return total, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--progress-bar", action="store_true", help="keep the engine's progress bar on")
    parser.add_argument("--no-flops", action="store_true", help="turn the engine's FLOP counter off")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared machine)")
    parser.add_argument("--bare", action="store_true", help="also time a bare Lightning Trainer per experience")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flops = not args.no_flops
    engine_seconds(args.progress_bar, flops), hand_loop_seconds()  # warm-up (imports, allocator, first-call costs)
    eng, hand, bare = [], [], []
    for r in range(args.repeats):
        if args.bare:
            bare.append(bare_lightning_seconds())
        if r % 2:
            hand.append(hand_loop_seconds())
            eng.append(engine_seconds(args.progress_bar, flops))
        else:
            eng.append(engine_seconds(args.progress_bar, flops))
            hand.append(hand_loop_seconds())
    print(f"threads={torch.get_num_threads()} repeats={args.repeats} progress_bar={args.progress_bar} flops={flops}")
    for i, clock in enumerate(("wall", "cpu")):
        e, h = statistics.median(x[i] for x in eng), statistics.median(x[i] for x in hand)
        ratios = [a[i] / b[i] for a, b in zip(eng, hand)]
        print(f"[{clock}] hand-written loop: {h:.3f} s  (runs: {', '.join(f'{v[i]:.3f}' for v in hand)})")
        print(f"[{clock}] cl engine:         {e:.3f} s  (runs: {', '.join(f'{v[i]:.3f}' for v in eng)})")
        print(f"[{clock}] ratio engine/hand: {e / h:.3f}x  (per round: {', '.join(f'{v:.3f}' for v in ratios)})")
        if bare:
            b = statistics.median(x[i] for x in bare)
            print(f"[{clock}] bare Lightning:    {b:.3f} s  (runs: {', '.join(f'{v[i]:.3f}' for v in bare)})")
            print(f"[{clock}] ratio bare/hand:   {b / h:.3f}x   ratio engine/bare: {e / b:.3f}x")


if __name__ == "__main__":
    main()
