"""Engine overhead: training time of ``cl.run``'s stream engine vs a bare ``Trainer.fit`` and vs a hand-written loop.

Goals (issue 19): the engine adds at most 2% to a bare Lightning ``Trainer.fit`` per experience, and is at most 1.05x a
hand-written PyTorch loop, on the default experiment's own step (``--workload coda``: CODA-Prompt on the digits stream,
the tiny ViT pretrained on letters, frozen, two ViT passes per step, batch 32, 2 experiences x 5 epochs, Adam and the
reference's per-epoch cosine: conf/experiment/coda_digits.yaml without its finetune reference run). ``--workload cnn``
(sequential fine-tuning of the small CNN, 2 epochs, batch 32) is kept as information: its steps are ~10x shorter, so
fixed costs weigh more there.

Sides (``--sides``, default ``engine,bare,hand``; ``--flops-off-side`` adds ``engine_off``) train the same initial
weights (one deep-copied method) on the same stream, evaluation excluded (experiments/bench/stream_sides.py):

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
* ``engine_off``: ``engine`` with the FLOP counter off (``callbacks.flops=null``), so that the counter's cost is a
  ratio measured side by side (``engine/engine_off``).
* ``bare_again``: the bare side a second time, an A/A control: what the bench reads between identical sides (~1 % at
  32 experiences, 2026-12-04).

The bench checks that the sides end with bit-identical weights (every tensor of the method's ``state_dict``,
after the warm-up and after every round); it stops with an error otherwise.

Pairing (``--interleave``): by default every round trains experience t of every side, in a new random order, then
experience t + 1, so the unit of a ratio is one experience (the goal's unit) and the two times of a pair were measured
seconds apart; ``run`` interleaves whole runs instead (the only mode before 2026-12-04, when it rotated a fixed order,
so that each side always followed the same other side). Single runs on this machine drift by 5-20 % between rounds
with nothing else running; per-experience pairs in random order cut the spread of the ratios to an IQR of about
+-2.5 %. Reported per pair of sides (experiments/bench/paired_ratios.py): the median of the per-unit ratios (IQR,
95 % bootstrap CI), the ratio of totals with its 95 % bootstrap CI, and the verdict against the goal from that
interval (met: upper end <= goal; missed: lower end > goal; else not resolved), for wall-clock time and the process's
CPU time. One process's ratio varied by several % between processes of the same code (2026-11-29): ``--processes P``
runs P processes one after the other (process i orders its sides with seed ``--seed`` + i) and pools their units; the
ratio of totals then also gets an interval that resamples whole processes (units of one process shift together), and
the verdict uses that one. ``--save FILE`` writes every unit's times and process.

glibc's allocator: both sides run with glibc's mmap and trim thresholds fixed high (``mallopt`` at start), so that freed
activations stay in the heap instead of being returned to the OS and faulted in again (the minor page faults of one
round varied 20x between rounds of the same work otherwise); ``--no-malloc-tuning`` keeps glibc's defaults.

    flock -x /tmp/bench.lock python experiments/bench/stream_overhead.py [--workload coda|cnn] [--repeats 10]
        [--processes 1] [--sides engine,bare,hand] [--interleave experience|run] [--seed 0] [--no-flops]
        [--flops-off-side] [--progress-bar] [--threads 1] [--no-malloc-tuning] [--save FILE]
        [engine config overrides]

Measurements (with the commands, the load, and before/after the FLOP counter's per-module fingerprint):
experiments/bench/README.md, section "Engine overhead". Turn the counter off (``callbacks.flops=null``) for timing runs
where FLOPs are not needed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HOME", tempfile.mkdtemp())
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from experiments.bench.paired_ratios import paired_ratio  # noqa: E402
from experiments.bench.stream_sides import SIDES, WORKLOADS, Setup, check_identical, drain  # noqa: E402


def report(
    name: str,
    runs: list[list[float]],
    ref: list[list[float]],
    ref_name: str,
    goal: float | None,
    groups: list[int] | None = None,
) -> None:
    """Per pair of sides and clock: median seconds per unit, the per-unit ratios' median (IQR, 95 % bootstrap CI),
    the ratio of totals (95 % CI over units; with several processes also over processes) and, for wall-clock time,
    the verdict against the goal from the widest of those intervals (experiments/bench/paired_ratios.py)."""
    for i, clock in enumerate(("wall", "cpu")):
        a, b = [x[i] for x in runs], [x[i] for x in ref]
        s = paired_ratio(a, b)
        by_process = paired_ratio(a, b, groups) if groups and len(set(groups)) > 1 else None
        verdict = (by_process or s).verdict(goal) if goal else ""
        mark = f"  goal <= {goal:.2f}x: {verdict}" if goal and clock == "wall" else ""
        clustered = (
            f", CI over {by_process.groups} processes {by_process.total_ci[0]:.4f}-{by_process.total_ci[1]:.4f}"
            if by_process
            else ""
        )
        print(
            f"[{clock:4}] {name + '/' + ref_name:>17}  median {s.median:.3f}x (IQR {s.q1:.3f}-{s.q3:.3f}, "
            f"CI {s.median_ci[0]:.3f}-{s.median_ci[1]:.3f})  total {s.total:.4f}x (CI {s.total_ci[0]:.4f}-"
            f"{s.total_ci[1]:.4f}{clustered})  [{statistics.median(a):.3f} s vs {statistics.median(b):.3f} s, "
            f"n={s.units}]{mark}"
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
    """This process's units: side -> [[wall, CPU], ...], one unit per experience (``--interleave experience``) or per
    run (``--interleave run``), after one warm-up run of each side."""
    torch.set_num_threads(args.threads)
    extra = [f"trainer.enable_progress_bar={args.progress_bar}"] + (["callbacks.flops=null"] if args.no_flops else [])
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(args.workload, extra + args.overrides, Path(tmp))
    names = args.sides
    check_identical({name: drain(SIDES[name](setup))[1] for name in names})  # warm-up (imports, allocator, first calls)
    rng = random.Random(args.seed)
    results: dict[str, list[list[float]]] = {k: [] for k in names}
    for _ in range(args.repeats):
        sides = {name: SIDES[name](setup) for name in names}
        trained = {}
        if args.interleave == "experience":  # experience t of every side, in a new random order, then t + 1
            for _t in range(len(setup.stream)):
                for name in rng.sample(names, len(names)):
                    results[name].append(list(next(sides[name])))
            trained = {name: drain(side)[1] for name, side in sides.items()}
        else:  # whole runs, in a new random order every round
            for name in rng.sample(names, len(names)):
                timings, trained[name] = drain(sides[name])
                results[name].append([sum(t[0] for t in timings), sum(t[1] for t in timings)])
        check_identical(trained)
    return results


def pooled(args: argparse.Namespace) -> tuple[dict[str, list[list[float]]], list[int]]:
    """Run ``args.processes`` worker processes one after the other; their units, pooled, and each unit's process."""
    flags = ["--repeats", str(args.repeats), "--threads", str(args.threads), "--workload", args.workload]
    flags += ["--interleave", args.interleave, "--sides", ",".join(args.sides)]
    switches = ("no_malloc_tuning", "progress_bar", "no_flops")
    flags = [f"--{k.replace('_', '-')}" for k in switches if getattr(args, k)] + flags
    out: dict[str, list[list[float]]] = {}
    groups: list[int] = []
    for i in range(args.processes):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rounds.json"
            seed = ["--seed", str(args.seed + i)]
            subprocess.run([sys.executable, __file__, *seed, "--json", str(path), *flags, *args.overrides], check=True)
            rounds = json.loads(path.read_text())
        for name, values in rounds.items():
            out.setdefault(name, []).extend(values)
        groups += [i] * len(next(iter(rounds.values())))
        if "engine" in rounds and "bare" in rounds:
            engine, bare = (sum(x[0] for x in rounds[k]) for k in ("engine", "bare"))
            print(f"process {i}: engine/bare wall, ratio of totals {engine / bare:.4f}x", flush=True)
    return out, groups


def sides_arg(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SIDES]
    if unknown or len(names) < 2:
        raise argparse.ArgumentTypeError(f"--sides: two or more of {', '.join(SIDES)}; got {text!r}")
    return names


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
    parser.add_argument(
        "--sides", type=sides_arg, default="engine,bare,hand", help=f"comma-separated, of {', '.join(SIDES)}"
    )
    parser.add_argument(
        "--interleave",
        choices=("experience", "run"),
        default="experience",
        help="unit of the pairing: an experience of every side in turn, or a whole run of every side in turn",
    )
    parser.add_argument("--save", help="write every unit's wall and CPU seconds (and its process) to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="the sides' random order (process i of --processes: +i)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides of the engine side")
    args = parser.parse_args()
    if args.flops_off_side and "engine_off" not in args.sides:
        args.sides.append("engine_off")
    groups: list[int] | None = None
    if args.processes > 1:
        results, groups = pooled(args)
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
    pairs = [
        ("engine", "bare", 1.02),
        ("engine", "hand", 1.05),
        ("bare", "hand", None),
        ("engine_off", "bare", 1.02),
        ("engine_off", "hand", 1.05),
        ("engine", "engine_off", None),
        ("bare_again", "bare", None),  # the A/A control
    ]
    for a, b, target in pairs:
        if a in results and b in results:
            report(a, results[a], results[b], b, target if goal else None, groups)
    if args.save:  # every unit's times, for other statistics later
        Path(args.save).write_text(json.dumps({"units": results, "process": groups, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
