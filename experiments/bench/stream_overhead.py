"""Engine overhead: training time of ``cl.run``'s stream engine vs a hand-written PyTorch loop doing the same training.

Same model (small CNN), same data (the digits class-incremental stream, 5 experiences of 2 classes), same optimizer
(Adam 1e-3), same masked cross-entropy, 2 epochs per experience, batch 32, same DataLoaders; evaluation is excluded
from both (the engine's ``train_seconds`` counts fit, which makes the optimizer, + the method's end-of-experience
hook, which is empty for finetune; the hand loop's time counts making its optimizer and its epochs). Both run in this
process from one deep-copied initial method and one stream (built once), interleaved over ``--repeats`` rounds (the
order rotates between rounds, so a load that drifts on a shared machine biases no side). Each round gives one
engine/hand ratio; the median and interquartile range of those ratios are reported, for wall-clock time (the goal) and
for the process's CPU time (less sensitive to other processes on the machine). Single runs vary by ~10% here even on a
quiet machine (CPU time as much as wall time: a plain matmul loop's median varies by ~10% over a minute on this VM),
so the default 30 rounds (~2 minutes) are needed to resolve ~5%; ``--processes P`` runs P such processes one after the
other and pools their rounds: one process's median ratio varied from 0.96x to 1.08x between processes of the same code
(2026-11-29, 20 rounds each), more than the rounds within a process resolve.

Measured 2026-11-29 (1 thread, ``--processes 5 --repeats 20``, engine/hand wall ratio, median of the pooled rounds):
default 1.020x and 1.033x (two runs), ``--no-flops`` 1.021x (3 processes), ``trainer=lightning`` 1.153x, and a bare
Lightning ``Trainer`` per experience 1.141x (``--bare``, 2 processes).

glibc's allocator: by default both sides run with glibc's mmap and trim thresholds fixed high (``mallopt`` at start,
the effect of ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``), so that freed activations stay in the heap
instead of being returned to the OS and faulted in again: with glibc's adaptive thresholds the minor page faults of
one side's training varied from 0.7k to 14k between rounds of the same work (tens of ms of a ~1 s run), a noise that
is not the engine's. ``--no-malloc-tuning`` keeps glibc's defaults.

    python experiments/bench/stream_overhead.py [--repeats 30] [--processes 1] [--no-malloc-tuning]
        [--progress-bar] [--no-flops] [--threads 1] [--bare] [engine config overrides, e.g. trainer=lightning]

``--bare`` also times a bare Lightning ``Trainer`` per experience (no callbacks, no logger) fitting the same method:
the floor of an engine that calls ``Trainer.fit`` once per experience.

What the engine does on top of the hand-written loop, by default: its lean loop (``trainer=cpu``,
cl/engine/lean.py: hook dispatch, one loop per experience; ``trainer=lightning`` on the command line times Lightning's
Trainer instead), the FLOP counter (``callbacks.flops``, mode ``cached``: each kind of step traced once, counts carried
over experiences for the base-class methods, see cl/callbacks/flops.py; ``--no-flops`` sets ``callbacks.flops=null``),
and the parameters-updated count. Not here: the per-step CSV log (``logger=none`` on the engine side; the hand loop
logs nothing either) and the progress bar (off unless ``--progress-bar``; redrawn at most 10 times a second).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HOME", tempfile.mkdtemp())
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tests.helpers import compose_config  # noqa: E402

OVERRIDES = ["backbone=cnn_small", "method=finetune", "trainer.max_epochs=2", "data.batch_size=32", "logger=none"]


class Setup:
    """The composed config, the stream and the untrained method, built once: every round trains a deep copy of the
    same initial method on the same stream (building them per round cost more time than the training itself)."""

    def __init__(self, extra: list[str], tmp: Path) -> None:
        from cl.experiment import build

        self.cfg = compose_config(OVERRIDES + extra, tmp, shrink=False)
        self.stream, self._method = build(self.cfg)

    def method(self) -> Any:
        return copy.deepcopy(self._method)


def engine_seconds(setup: Setup) -> tuple[float, float]:
    """(wall, CPU) seconds of the engine's training over the stream."""
    from cl.engine.loop import StreamRunner

    with tempfile.TemporaryDirectory() as tmp:
        runner = StreamRunner(setup.cfg, setup.method(), setup.stream, Path(tmp))
        runner.evaluate = lambda: ([0.0] * len(setup.stream), [0.0] * len(setup.stream))  # evaluation excluded
        runner.run()
        return runner.train_seconds, runner.train_cpu_seconds


def hand_loop_seconds(setup: Setup) -> tuple[float, float]:
    """(wall, CPU) seconds of the hand-written loop's training over the stream."""
    from cl.engine.loop import StreamRunner

    with tempfile.TemporaryDirectory() as tmp:
        method, stream = setup.method(), setup.stream
        loaders = StreamRunner(setup.cfg, method, stream, Path(tmp))
        seen = torch.zeros(stream.num_classes, dtype=torch.bool)
        total = cpu = 0.0
        for t, exp in enumerate(stream.experiences):
            torch.manual_seed(t)
            seen[exp.classes] = True
            loader = loaders.train_loader(exp.train, t)
            start, cpu_start = time.perf_counter(), time.process_time()  # the engine's fit also makes its optimizer
            opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
            method.train()
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


def bare_lightning_seconds(setup: Setup) -> tuple[float, float]:
    """(wall, CPU) seconds of a bare Lightning Trainer per experience (no callbacks, logger, progress bar) fitting the
    same method: the floor of any engine built on one ``Trainer.fit`` per experience."""
    import lightning as L

    from cl.engine.loop import StreamRunner

    with tempfile.TemporaryDirectory() as tmp:
        method, stream = setup.method(), setup.stream
        loaders = StreamRunner(setup.cfg, method, stream, Path(tmp))
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


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def report(name: str, runs: list[tuple[float, float]], ref: list[tuple[float, float]], ref_name: str = "hand") -> None:
    """Median seconds of each side and the per-round ratios' median and interquartile range, wall and CPU."""
    for i, clock in enumerate(("wall", "cpu")):
        q1, med, q3 = quartiles([a[i] / b[i] for a, b in zip(runs, ref)])
        e, h = statistics.median(x[i] for x in runs), statistics.median(x[i] for x in ref)
        print(
            f"[{clock:4}] {name + '/' + ref_name:>12}  ratio median {med:.3f}x  IQR {q1:.3f}-{q3:.3f}x   "
            f"(median {e:.3f} s vs {h:.3f} s; ratio of medians {e / h:.3f}x)"
        )


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold (1 GiB), trim threshold (2 GiB) and top pad (64 MiB); False where not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    settings = ((m_mmap_threshold, 1 << 30), (m_trim_threshold, 1 << 31), (m_top_pad, 64 << 20))
    return all(libc.mallopt(k, v) == 1 for k, v in settings)


def measure(args: argparse.Namespace) -> dict[str, list[list[float]]]:
    """This process's rounds: side -> [[wall, CPU], ...] (after one warm-up run of each side)."""
    torch.set_num_threads(args.threads)
    extra = [f"trainer.enable_progress_bar={args.progress_bar}"] + (["callbacks.flops=null"] if args.no_flops else [])
    with tempfile.TemporaryDirectory() as tmp:
        engine_setup, hand_setup = Setup(extra + args.overrides, Path(tmp)), Setup([], Path(tmp))
    sides = {"engine": lambda: engine_seconds(engine_setup), "hand": lambda: hand_loop_seconds(hand_setup)}
    if args.bare:
        sides["bare"] = lambda: bare_lightning_seconds(hand_setup)
    for fn in sides.values():  # warm-up (imports, allocator, first-call costs)
        fn()
    results: dict[str, list[list[float]]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate which side runs first
            results[name].append(list(sides[name]()))
    return results


def pooled(args: argparse.Namespace) -> dict[str, list[list[float]]]:
    """Run ``args.processes`` worker processes one after the other; their rounds, pooled."""
    flags = ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    flags += [
        f"--{k.replace('_', '-')}" for k in ("no_malloc_tuning", "progress_bar", "no_flops", "bare") if getattr(args, k)
    ]
    out: dict[str, list[list[float]]] = {}
    for i in range(args.processes):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rounds.json"
            subprocess.run([sys.executable, __file__, *flags, "--json", str(path), *args.overrides], check=True)
            rounds = json.loads(path.read_text())
        for name, values in rounds.items():
            out.setdefault(name, []).extend(values)
        ratios = [e[0] / h[0] for e, h in zip(rounds["engine"], rounds["hand"])]
        print(f"process {i}: engine/hand wall ratio median {statistics.median(ratios):.3f}x", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="rounds per process")
    parser.add_argument("--processes", type=int, default=1, help="worker processes, one after the other, pooled")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's adaptive malloc thresholds")
    parser.add_argument("--json", help=argparse.SUPPRESS)  # where a worker writes its rounds (--processes)
    parser.add_argument("--progress-bar", action="store_true", help="keep the engine's progress bar on")
    parser.add_argument("--no-flops", action="store_true", help="turn the engine's FLOP counter off")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared machine)")
    parser.add_argument("--bare", action="store_true", help="also time a bare Lightning Trainer per experience")
    parser.add_argument("overrides", nargs="*", help="extra config overrides of the engine side (e.g. trainer=...)")
    args = parser.parse_args()
    if args.processes > 1:
        results = pooled(args)
        tuned = not args.no_malloc_tuning
    else:
        tuned = not args.no_malloc_tuning and tune_malloc()
        results = measure(args)
        if args.json:
            Path(args.json).write_text(json.dumps(results))
            return
    print(
        f"threads={args.threads} processes={args.processes} repeats={args.repeats} malloc_tuning={tuned} "
        f"progress_bar={args.progress_bar} flops={not args.no_flops} overrides={args.overrides}"
    )
    for name, values in results.items():
        print(f"{name:>6} wall s: {', '.join(f'{v[0]:.3f}' for v in values)}")
    report("engine", results["engine"], results["hand"])
    if args.bare:
        report("bare", results["bare"], results["hand"])
        report("engine", results["engine"], results["bare"], "bare")


if __name__ == "__main__":
    main()
