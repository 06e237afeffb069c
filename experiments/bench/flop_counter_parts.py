"""The FLOP counter's cost by parts, on the default experiment's own training step (CODA-Prompt, tiny ViT, batch 32).

Whole-engine runs with the counter on and off (``stream_overhead.py --flops-off-side``) differ by ~1-2 %, less than
what a shared machine's drifting load does to runs seconds apart. This bench times single training steps (forward,
backward, Adam step on one batch of experience 0) instead, each variant right after another, order rotated every
round, and reports per-variant the median of its ratio to the adjacent plain step (thread CPU time), so the drift
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
  count), driven through the calls Lightning makes: what every untraced step of the cached mode pays.

    flock -x /tmp/bench.lock python experiments/bench/flop_counter_parts.py [--rounds 240] [--rows 2]

Results: experiments/bench/README.md, section "Engine overhead".
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from experiments.bench.stream_overhead import Setup, tune_malloc  # noqa: E402


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


def variants(setup: Setup, rows: int | None) -> dict[str, Any]:
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
    return {**parts, "counter": whole(Copy(method, batch))}


def whole(run: Copy) -> Any:
    """The ``counter`` variant: the step with everything ``FlopCounter`` (mode ``cached``) does around an untraced
    step of ``fit``, driven through the calls Lightning makes (the profiler actions of data fetching and of the step,
    ``on_train_batch_start``, ``on_before_optimizer_step``), from the end of fetching one batch to the start of
    fetching the next."""
    from lightning.pytorch.profilers import PassThroughProfiler

    from cl.callbacks.flops import FETCH_SUFFIX, STEP_ACTION, FlopCounter

    trainer = type("Trainer", (), {"profiler": PassThroughProfiler()})()
    counter, method = FlopCounter(mode="cached"), run.method
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
    args = parser.parse_args()
    torch.set_num_threads(1)
    tune_malloc()
    with tempfile.TemporaryDirectory() as tmp:
        fns = variants(Setup("coda", ["trainer.enable_progress_bar=False"], Path(tmp)), args.rows)
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
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
