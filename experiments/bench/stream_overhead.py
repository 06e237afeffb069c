"""Engine overhead: training time of ``cl.run``'s stream engine vs a bare ``Trainer.fit`` and vs a hand-written loop.

Goals (issue 19): the engine adds at most 2% to a bare Lightning ``Trainer.fit`` per experience, and is at most 1.05x a
hand-written PyTorch loop, on the default experiment's own step (``--workload coda``: CODA-Prompt on the digits stream,
the tiny ViT pretrained on letters, frozen, two ViT passes per step, batch 32, 2 experiences x 5 epochs, Adam and the
reference's per-epoch cosine: conf/experiment/coda_digits.yaml without its finetune reference run). ``--workload cnn``
(sequential fine-tuning of the small CNN, 2 epochs, batch 32) is kept as information: its steps are ~10x shorter, so
fixed costs weigh more there.

Three sides (four with ``--flops-off-side``) train the same initial weights (one deep-copied method) on the same
stream, evaluation excluded:

* ``engine``: ``cl.engine.loop.StreamRunner`` as ``cl.run`` runs it (a Trainer per experience built by
  ``cl/engine/trainer.py``, the FLOP counter in its default ``cached`` mode unless ``--no-flops``, the
  parameters-updated count; the CSV log and the progress bar are off: ``logger=none``, unless ``--progress-bar``); its
  ``train_seconds`` count building the Trainer and the loader, ``fit`` and the method's end-of-experience hook.
* ``bare``: a bare Lightning ``Trainer`` per experience (no callbacks, no logger, no progress bar) fitting the method on
  the engine's loader, with the method's experience hooks: the floor of any engine built on one ``Trainer.fit`` per
  experience. Timed from building the Trainer to the end-of-experience hook.
* ``hand``: a hand-written loop: ``configure_optimizers()``, then per epoch ``sampler.set_epoch(epoch)`` (a new
  shuffle every epoch, as Lightning does), ``on_train_epoch_start`` (the prompt methods keep the frozen ViT in eval
  mode there), and per batch ``training_step``, ``zero_grad``, ``backward``, ``step``; the epoch scheduler after each
  epoch. Timed from ``configure_optimizers`` to the end-of-experience hook.
* ``engine_off`` (``--flops-off-side``): ``engine`` with the FLOP counter off (``callbacks.flops=null``), in the same
  rounds, so that the counter's cost is a ratio measured side by side (``engine/engine_off``).

The bench checks that the sides end with bit-identical weights (every tensor of the method's ``state_dict``,
after the warm-up and after every round); it stops with an error otherwise. Sides run interleaved over ``--repeats``
rounds (the order rotates between rounds, so a load that drifts on a shared machine biases no side); each round gives
one ratio per pair, reported as median and interquartile range, for wall-clock time (the goal) and the process's CPU
time. One process's median ratio varied by up to ~10% between processes of the same code (2026-11-29): ``--processes
P`` runs P processes one after the other and pools their rounds.

glibc's allocator: both sides run with glibc's mmap and trim thresholds fixed high (``mallopt`` at start), so that freed
activations stay in the heap instead of being returned to the OS and faulted in again (the minor page faults of one
round varied 20x between rounds of the same work otherwise); ``--no-malloc-tuning`` keeps glibc's defaults.

    flock -x /tmp/bench.lock python experiments/bench/stream_overhead.py [--workload coda|cnn] [--repeats 10]
        [--processes 1] [--no-flops] [--flops-off-side] [--progress-bar] [--threads 1] [--no-malloc-tuning]
        [engine config overrides]

Measurements (with the commands, the load, and before/after the FLOP counter's per-module fingerprint):
experiments/bench/README.md, section "Engine overhead". Turn the counter off (``callbacks.flops=null``) for timing runs
where FLOPs are not needed.
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

from tests.helpers import compose_config  # noqa: E402

WORKLOADS = {
    # the default experiment (conf/cl.yaml: experiment=coda_digits, 2 experiences x 5 classes) without its reference
    # runs; ``--workload coda5`` is the 5 x 2 stream it had before 2026-12-03
    "coda": [
        "experiment=coda_digits",
        "callbacks.finetune_reference=null",
        "callbacks.simplecil_reference=null",
        "callbacks.linear_probe_reference=null",
        "data.batch_size=32",
    ],
    "coda5": [
        "experiment=coda_digits",
        "scenario.n_experiences=5",
        "callbacks.finetune_reference=null",
        "callbacks.simplecil_reference=null",
        "callbacks.linear_probe_reference=null",
        "data.batch_size=32",
    ],
    "cnn": ["backbone=cnn_small", "method=finetune", "trainer.max_epochs=2", "data.batch_size=32"],
}
COMMON = ["logger=none"]


class Setup:
    """The composed configs, the stream and the untrained method, built once: every round trains a deep copy of the
    same initial method on the same stream (building them per round cost more time than the training itself)."""

    def __init__(self, workload: str, extra: list[str], tmp: Path) -> None:
        from cl.experiment import build

        self.cfg = compose_config(WORKLOADS[workload] + COMMON, tmp, shrink=False)
        self.engine_cfg = compose_config(WORKLOADS[workload] + COMMON + extra, tmp, shrink=False)
        off = [*extra, "callbacks.flops=null"]  # the ``engine_off`` side (``--flops-off-side``)
        self.engine_off_cfg = compose_config(WORKLOADS[workload] + COMMON + off, tmp, shrink=False)
        self.stream, self._method = build(self.cfg)
        self.epochs = int(self.cfg.trainer.max_epochs)

    def method(self) -> Any:
        return copy.deepcopy(self._method)

    def loader(self, method: Any, t: int) -> Any:
        """Experience t's training loader, exactly as the engine builds it (same sampler and seed)."""
        from cl.engine.loop import StreamRunner

        runner = StreamRunner(self.cfg, method, self.stream, Path(tempfile.gettempdir()))
        exp = self.stream.experiences[t]
        return runner.train_loader(method.train_dataset(exp, self.stream), t)


Result = tuple[float, float, Any]  # wall seconds, CPU seconds, the trained method


def engine_run(setup: Setup, counter_off: bool = False) -> Result:
    from cl.engine.loop import StreamRunner

    with tempfile.TemporaryDirectory() as tmp:
        method = setup.method()
        cfg = setup.engine_off_cfg if counter_off else setup.engine_cfg
        runner = StreamRunner(cfg, method, setup.stream, Path(tmp))
        runner.evaluate = lambda: ([0.0] * len(setup.stream), [0.0] * len(setup.stream))  # evaluation excluded
        runner.run()
        return runner.train_seconds, runner.train_cpu_seconds, method


def bare_run(setup: Setup) -> Result:
    import lightning as L
    from lightning.fabric.utilities.seed import seed_everything

    from cl.engine.trainer import quiet_lightning_notices

    quiet_lightning_notices()
    method, total, cpu = setup.method(), 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for t, exp in enumerate(setup.stream.experiences):
            seed_everything(int(setup.cfg.seed) + t, verbose=False)
            method.on_experience_start(exp)
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer = L.Trainer(
                accelerator="cpu", devices=1, max_epochs=setup.epochs, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp,
            )  # fmt: skip
            trainer.fit(method, train_dataloaders=setup.loader(method, t))
            method.on_experience_end(exp, lambda d: None)
            total += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
    return total, cpu, method


def hand_run(setup: Setup) -> Result:
    from lightning.fabric.utilities.seed import seed_everything

    method, total, cpu = setup.method(), 0.0, 0.0
    for t, exp in enumerate(setup.stream.experiences):
        seed_everything(int(setup.cfg.seed) + t, verbose=False)
        method.on_experience_start(exp)
        loader = setup.loader(method, t)
        start, cpu_start = time.perf_counter(), time.process_time()
        conf = method.configure_optimizers()
        opt, sched = (conf["optimizer"], conf["lr_scheduler"]["scheduler"]) if isinstance(conf, dict) else (conf, None)
        method.train()
        for epoch in range(setup.epochs):
            loader.sampler.set_epoch(epoch)  # a new shuffle every epoch, as Lightning does
            method.on_train_epoch_start()
            for i, batch in enumerate(loader):
                out = method.training_step(batch, i)
                loss = out["loss"] if isinstance(out, dict) else out
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if sched is not None:  # interval "epoch" (the prompt methods' cosine)
                sched.step()
        method.on_experience_end(exp, lambda d: None)
        total += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
    return total, cpu, method


def check_identical(methods: dict[str, Any]) -> None:
    """Every tensor of the sides' state dicts equal, bit for bit; raises naming the first that differs."""
    (ref_name, ref), *others = methods.items()
    ref_state = ref.state_dict()
    for name, method in others:
        for key, value in method.state_dict().items():
            if not torch.equal(value, ref_state[key]):
                diff = (value.double() - ref_state[key].double()).abs().max().item()
                raise SystemExit(f"{name} and {ref_name} differ at {key} (max |diff| {diff:.3g}): not one training")


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def report(name: str, runs: list[list[float]], ref: list[list[float]], ref_name: str, goal: float | None) -> None:
    """Median seconds of each side and the per-round ratios' median and interquartile range, wall and CPU."""
    for i, clock in enumerate(("wall", "cpu")):
        q1, med, q3 = quartiles([a[i] / b[i] for a, b in zip(runs, ref)])
        a, b = statistics.median(x[i] for x in runs), statistics.median(x[i] for x in ref)
        mark = f"  goal <= {goal:.2f}x" if goal and clock == "wall" else ""
        print(
            f"[{clock:4}] {name + '/' + ref_name:>12}  ratio median {med:.3f}x  IQR {q1:.3f}-{q3:.3f}x   "
            f"(median {a:.3f} s vs {b:.3f} s){mark}"
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
        setup = Setup(args.workload, extra + args.overrides, Path(tmp))
    sides = {"engine": engine_run, "bare": bare_run, "hand": hand_run}
    if args.flops_off_side:
        sides["engine_off"] = lambda s: engine_run(s, counter_off=True)
    names = list(sides)
    check_identical({name: fn(setup)[2] for name, fn in sides.items()})  # warm-up (imports, allocator, first calls)
    results: dict[str, list[list[float]]] = {k: [] for k in sides}
    for r in range(args.repeats):
        trained = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate which side runs first
            wall, cpu, trained[name] = sides[name](setup)
            results[name].append([wall, cpu])
        check_identical(trained)
    return results


def pooled(args: argparse.Namespace) -> dict[str, list[list[float]]]:
    """Run ``args.processes`` worker processes one after the other; their rounds, pooled."""
    flags = ["--repeats", str(args.repeats), "--threads", str(args.threads), "--workload", args.workload]
    switches = ("no_malloc_tuning", "progress_bar", "no_flops", "flops_off_side")
    flags += [f"--{k.replace('_', '-')}" for k in switches if getattr(args, k)]
    out: dict[str, list[list[float]]] = {}
    for i in range(args.processes):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rounds.json"
            subprocess.run([sys.executable, __file__, *flags, "--json", str(path), *args.overrides], check=True)
            rounds = json.loads(path.read_text())
        for name, values in rounds.items():
            out.setdefault(name, []).extend(values)
        ratios = [e[0] / b[0] for e, b in zip(rounds["engine"], rounds["bare"])]
        print(f"process {i}: engine/bare wall ratio median {statistics.median(ratios):.3f}x", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="coda", help="coda: the goal; cnn: info")
    parser.add_argument("--repeats", type=int, default=10, help="rounds per process")
    parser.add_argument("--processes", type=int, default=1, help="worker processes, one after the other, pooled")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's adaptive malloc thresholds")
    parser.add_argument("--json", help=argparse.SUPPRESS)  # where a worker writes its rounds (--processes)
    parser.add_argument("--progress-bar", action="store_true", help="keep the engine's progress bar on")
    parser.add_argument("--no-flops", action="store_true", help="turn the engine's FLOP counter off")
    parser.add_argument(
        "--flops-off-side", action="store_true", help="a 4th side: the engine with its FLOP counter off, same rounds"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared machine)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides of the engine side")
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
        f"workload={args.workload} threads={args.threads} processes={args.processes} repeats={args.repeats} "
        f"malloc_tuning={tuned} progress_bar={args.progress_bar} flops={not args.no_flops} overrides={args.overrides}"
        f"\nweights: {', '.join(results)} bit-identical after every round"
    )
    for name, values in results.items():
        print(f"{name:>6} wall s: {', '.join(f'{v[0]:.3f}' for v in values)}")
    goal = args.workload == "coda"
    report("engine", results["engine"], results["bare"], "bare", 1.02 if goal else None)
    report("engine", results["engine"], results["hand"], "hand", 1.05 if goal else None)
    report("bare", results["bare"], results["hand"], "hand", None)
    if "engine_off" in results:
        report("engine_off", results["engine_off"], results["bare"], "bare", 1.02 if goal else None)
        report("engine_off", results["engine_off"], results["hand"], "hand", 1.05 if goal else None)
        report("engine", results["engine"], results["engine_off"], "engine_off", None)


if __name__ == "__main__":
    main()
