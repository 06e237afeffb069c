"""The FLOP counter's cost by parts, on the default experiment's own training step (CODA-Prompt, tiny ViT, batch 32).

Whole-engine runs with the counter on and off (``stream_overhead.py --flops-off-side``) differ by ~1-2 %, less than
what a shared machine's drifting load does to runs seconds apart. This bench times single training steps (forward,
backward, Adam step on one batch of experience 0) instead, each variant right after another, order rotated every
round, and reports per-variant the median of its ratio to the adjacent plain step (thread CPU time), so the drift
cancels within a round. The counter's extra work per step is Python per module call or per op, the same at any batch
size: ``--rows 2`` measures it on a step ~5x shorter, so with less of the load's noise around it.

* ``fingerprint``: the step inside an untraced window of ``cl.callbacks.flop_steps.StepCache`` (what every step of
  the cached mode pays: per-module pre-hooks on the watched modules, the fingerprint's tuple and its lookup);
* ``global_hook``: the step with a global module pre-hook recording every module call as the counter did before
  commit 595f8d0 (module, grad mode, argument shapes; every module call then takes ``Module._call_impl``'s slow path);
* ``traced``: the step under the ``LightFlopCounter`` dispatch mode (the counter's traced steps: 4 of ~215 per run).

    flock -x /tmp/bench.lock python experiments/bench/flop_counter_parts.py [--rounds 240] [--rows 2]

Results: experiments/bench/README.md, section "Engine overhead".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from experiments.bench.stream_overhead import Setup, tune_malloc  # noqa: E402


def variants(setup: Setup, rows: int | None) -> dict[str, Any]:
    from cl.analysis.flops import LightFlopCounter
    from cl.callbacks.flop_steps import StepCache, structure

    method = setup.method()
    method.on_experience_start(setup.stream.experiences[0])
    batch = [b[:rows] if isinstance(b, torch.Tensor) else b for b in next(iter(setup.loader(method, 0)))]
    conf = method.configure_optimizers()
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    method.train()
    method.on_train_epoch_start()

    def plain() -> None:
        out = method.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        (out["loss"] if isinstance(out, dict) else out).backward()
        opt.step()

    cache = StepCache(method)
    cache.open_window("batch")  # the first step is traced: it finds the modules to watch and learns the fingerprint
    with LightFlopCounter(cache.counted):
        plain()
    cache.close_window()

    def fingerprint() -> None:
        if cache.open_window("batch"):
            raise SystemExit("the fingerprint changed between identical steps")
        plain()
        cache.close_window()

    def global_hook() -> None:
        trace: list[tuple] = []

        def record(module: Any, args: tuple) -> None:
            key = tuple((a.shape, a.requires_grad) if isinstance(a, torch.Tensor) else structure(a, True) for a in args)
            trace.append((id(module), torch.is_grad_enabled(), key))

        handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
        plain()
        handle.remove()
        hash(tuple(trace))

    def traced() -> None:
        with LightFlopCounter():
            plain()

    return {"plain": plain, "fingerprint": fingerprint, "global_hook": global_hook, "traced": traced}


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
