"""The FLOP counter's cost by parts, on the default experiment's own training step (CODA-Prompt, tiny ViT, batch 32).

Whole-engine runs with the counter on and off (``stream_overhead.py --flops-off-side``) differ by ~1-2 %, less than
what a shared machine's drifting load does to runs seconds apart. This bench times single training steps (forward,
backward, Adam step on one batch of experience 0) instead, each variant right after another, in a new random order every
round, and reports per-variant the median of its ratio to the same round's plain step (thread CPU time), so the drift
cancels within a round. The counter's extra work per step is Python per module call or per op, the same at any batch
size: ``--rows 2`` measures it on a step ~5x shorter, so with less of the load's noise around it.

Each variant trains its own deep copy of the prepared method (``Copy``), so that ``plain`` runs on modules with no
watch or hook at all; ``plain_copy`` is the plain step on another copy (its difference to ``plain`` is the noise).

* ``fingerprint``: the step inside an untraced window of ``cl.callbacks.flop_steps.StepCache`` (the watched modules'
  recorded calls, the fingerprint's tuple and its lookup);
* ``global_hook``: the step with a global module pre-hook recording every module call as the counter did before
  commit 595f8d0 (module, grad mode, argument shapes; every module call then takes ``Module._call_impl``'s slow path);
* ``traced``: the step under the ``LightFlopCounter`` dispatch mode (the counter's traced steps: 2 of 210 per run);
* ``counter``: everything ``FlopCounter`` does around an untraced step of ``fit`` (the fingerprint, the dispatch mode
  left and entered again around the step and around data fetching, the batch's structure, the parameters-updated
  count), driven through the calls Lightning makes: what every untraced step of the cached mode pays;
* ``counter_before`` (``--before CHECKOUT``): ``counter`` with the FLOP counter of another checkout (``git worktree
  add /tmp/before COMMIT``), side by side with this one's.

    flock -x /tmp/bench.lock python experiments/bench/flop_counter_parts.py [--rounds 240] [--rows 2] [--before DIR]

Results: experiments/bench/README.md, section "Engine overhead".
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from experiments.bench.stream_overhead import tune_malloc  # noqa: E402
from experiments.bench.stream_sides import Setup  # noqa: E402


class Copy:
    """One deep copy of the prepared method (experience 0, training mode, its own optimizer): ``step()`` is one plain
    training step on ``batch``. Each variant that installs hooks on modules gets its own copy, so that the ``plain``
    step runs on a copy without any hook (a module with a hook takes ``Module._call_impl``'s slow path)."""

    def __init__(self, method: Any, batch: Any) -> None:
        self.method, self.batch = copy.deepcopy(method), batch
        conf = self.method.configure_optimizers()
        self.opt = conf["optimizer"] if isinstance(conf, dict) else conf
        self.method.train()
        self.method.on_train_epoch_start()

    def step(self, before_optimizer: Any = None) -> None:
        out = self.method.training_step(self.batch, 0)
        self.opt.zero_grad(set_to_none=True)
        (out["loss"] if isinstance(out, dict) else out).backward()
        if before_optimizer is not None:
            before_optimizer()
        self.opt.step()


def variants(setup: Setup, rows: int | None, before: Path | None = None) -> dict[str, Any]:
    from cl.analysis.flops import LightFlopCounter
    from cl.callbacks.flop_steps import StepCache, structure

    method = setup.method()
    method.on_experience_start(setup.stream.experiences[0])
    batch = [b[:rows] if isinstance(b, torch.Tensor) else b for b in next(iter(setup.loader(method, 0)))]
    bare, watched = Copy(method, batch), Copy(method, batch)

    cache = StepCache(watched.method)
    cache.open_window("batch")  # the first step is traced: it finds the modules to watch and learns the fingerprint
    with LightFlopCounter(cache.counted):
        watched.step()
    cache.close_window()

    def fingerprint() -> None:
        if cache.open_window("batch"):
            raise SystemExit("the fingerprint changed between identical steps")
        watched.step()
        cache.close_window()

    def global_hook() -> None:
        trace: list[tuple] = []

        def record(module: Any, args: tuple) -> None:
            key = tuple((a.shape, a.requires_grad) if isinstance(a, torch.Tensor) else structure(a, True) for a in args)
            trace.append((id(module), torch.is_grad_enabled(), key))

        handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
        bare.step()
        handle.remove()
        hash(tuple(trace))

    def traced() -> None:
        with LightFlopCounter():
            bare.step()

    parts = {"plain": bare.step, "plain_copy": Copy(method, batch).step, "fingerprint": fingerprint}
    parts.update({"global_hook": global_hook, "traced": traced})
    parts["counter"] = whole(Copy(method, batch))
    if before is not None:
        parts["counter_before"] = whole(Copy(method, batch), counter_of(before))
    return parts


def counter_of(checkout: Path) -> Any:
    """The ``cl.callbacks.flops`` module of another checkout (e.g. a ``git worktree`` of an earlier commit), loaded
    under its own names with that checkout's ``flop_steps`` (the rest of ``cl`` is this checkout's)."""
    import importlib.util

    modules = {}
    for name in ("flop_steps", "flops"):
        path = checkout / "cl" / "callbacks" / f"{name}.py"
        source = path.read_text().replace("from cl.callbacks.flop_steps import", "from before_flop_steps import")
        spec = importlib.util.spec_from_loader(f"before_{name}", loader=None)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        exec(compile(source, str(path), "exec"), module.__dict__)  # that checkout's own source
        modules[name] = module
    return modules["flops"]


def whole(run: Copy, flops: Any = None) -> Any:
    """The ``counter`` variant: the step with everything ``FlopCounter`` (mode ``cached``) does around an untraced
    step of ``fit``, driven through the calls Lightning makes (the profiler actions of data fetching and of the step,
    ``on_train_batch_start``, ``on_before_optimizer_step``), from the end of fetching one batch to the start of
    fetching the next."""
    from lightning.pytorch.profilers import PassThroughProfiler

    if flops is None:
        import cl.callbacks.flops as flops
    FETCH_SUFFIX, STEP_ACTION = flops.FETCH_SUFFIX, flops.STEP_ACTION

    trainer = type("Trainer", (), {"profiler": PassThroughProfiler()})()
    counter, method = flops.FlopCounter(mode="cached"), run.method
    counter.on_train_start(trainer, method)
    profiler, fetch = trainer.profiler, "[_TrainingEpochLoop]." + FETCH_SUFFIX

    def step() -> None:
        profiler.stop(fetch)
        counter.on_train_batch_start(trainer, method, run.batch, 0)
        profiler.start(STEP_ACTION)
        run.step(lambda: counter.on_before_optimizer_step(trainer, method, run.opt))
        profiler.stop(STEP_ACTION)
        profiler.start(fetch)
        if counter.traced_steps != 1:
            raise SystemExit(f"counter: {counter.traced_steps} traced steps, expected the first one only")

    profiler.start(fetch)
    step()  # the first step is traced
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=240, help="rounds of one step per variant")
    parser.add_argument("--rows", type=int, default=None, help="train on the batch's first ROWS samples (default: 32)")
    parser.add_argument("--before", type=Path, help="a checkout whose FlopCounter is timed too (counter_before)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tune_malloc()
    with tempfile.TemporaryDirectory() as tmp:
        fns = variants(Setup("coda", ["trainer.enable_progress_bar=False"], Path(tmp)), args.rows, args.before)
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    rng = random.Random(0)
    for _ in range(args.rounds):
        # a new random order every round: a rotation kept each variant after the same one (the one after ``traced``
        # ran ~0.3-0.4 ms slower in that position)
        for name in rng.sample(names, len(names)):
            start = time.thread_time()
            fns[name]()
            times[name].append(time.thread_time() - start)
    plain = times["plain"]
    print(f"plain step: median {statistics.median(plain) * 1e3:.2f} ms over {args.rounds} rounds")
    for name in names[1:]:
        ratios = [a / b for a, b in zip(times[name], plain)]
        extra = statistics.median((a - b) * 1e3 for a, b in zip(times[name], plain))
        q1, med, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        print(f"{name:>12}/plain: median ratio {med:.4f} (IQR {q1:.3f}-{q3:.3f}), median extra {extra:+.3f} ms")


if __name__ == "__main__":
    main()
