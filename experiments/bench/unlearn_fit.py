"""Benchmark: the seconds a training baseline reports (``finetune``, 5 epochs, one class forgotten), for comparing two
checkouts of the training loop (e.g. the plain loop before and Lightning's ``Trainer`` after, unlearn/training.py).

    python experiments/bench/unlearn_fit.py --make-checkpoint RUN_DIR   # once: the tests' tiny digits checkpoint
    flock -w 600 -x /tmp/bench.lock sh -c 'uptime; for tree in OLD NEW; do OMP_NUM_THREADS=1 PYTHONPATH=$tree \
        python $tree/experiments/bench/unlearn_fit.py --checkpoint RUN_DIR --classes 3 --repeats 3; done; uptime'

    flock -w 600 -x /tmp/bench.lock env OMP_NUM_THREADS=1 python experiments/bench/unlearn_fit.py --fixed

Each repeat is one :func:`unlearn.pipeline.run_unlearning` (probe and relearning attack off) into a fresh directory;
the reported ``seconds`` are the method's ``unlearn`` call alone, as every unlearning report states them. Printed: every
repeat's seconds, the median, the number of optimizer steps and the torch thread count. ``--fixed``: Lightning's fixed
cost per fit alone, ``unlearn.training.fit_epochs`` of one batch of 8 on a linear model against the same plain step,
12 rounds (median of the last 10, and the first).

Results (2026-12-04, 2 cores shared with two other sessions, load 2.4-2.9, 3 repeats each, old tree = main at 5166b19
with the plain loop, new = Lightning's Trainer; the tests' digits checkpoint, ViT-tiny, batch 32, forget class 3):

| finetune | plain loop (before) | Lightning Trainer (after) | after / before |
|---|---|---|---|
| 5 epochs, 190 steps | 6.317 s (6.205, 6.317, 6.434) | 5.958 s (5.958, 5.865, 6.317) | 0.94 |
| 1 epoch, 38 steps | 1.190 s (1.141, 1.190, 1.313) | 1.404 s (1.410, 1.404, 1.195) | 1.18 |

``--fixed`` (two runs): 14.4 and 15.3 ms per Lightning fit, 93-94 ms for the first fit of a process (which the
baseline's fit is in ``unlearn.run``), vs 0.8 ms for the plain step. So Lightning adds ~0.1 s per unlearning run: 1.5 %
of the 5-epoch finetune, ~8 % of a 1-epoch one, less than this machine's run-to-run spread (the 5-epoch run was even
faster with Lightning). It does not matter for the reported seconds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compose(overrides: list[str], config_name: str):  # noqa: ANN201
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import cl.resolvers  # noqa: F401
    import unlearn.resolvers  # noqa: F401

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose(config_name=config_name, overrides=overrides)


def make_checkpoint(run_dir: Path) -> None:
    """tests/unlearn/test_pipeline.py's fixture: joint on the 5-experience digits stream, 2 batches per experience."""
    import torch

    from tests.helpers import compose_config, run_cl

    torch.manual_seed(0)
    run_cl(compose_config(["method=joint", "logger=none", "+trainer.limit_train_batches=2"], run_dir))


def fixed_cost(rounds: int = 12) -> None:
    """Lightning's cost per fit: a 1-batch ``fit_epochs`` against the same plain SGD step (module docstring)."""
    import time

    import torch
    from omegaconf import OmegaConf
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from unlearn.training import fit_epochs

    cfg = OmegaConf.create({"accelerator": "cpu", "devices": 1, "precision": "32-true"})
    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    net = nn.Linear(4, 2)

    def loss(m: nn.Module, b: tuple) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b[0]), b[1])

    def sgd(params: list) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.1)

    def plain() -> None:
        opt = sgd(list(net.parameters()))
        for x, y in DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)):
            opt.zero_grad()
            loss(net, (x, y)).backward()
            opt.step()

    def lightning() -> None:
        fit_epochs(net, data, loss, sgd, epochs=1, batch_size=8, seed=0, trainer_cfg=cfg, device=torch.device("cpu"))

    times: dict[str, list[float]] = {"lightning": [], "plain": []}
    for _ in range(rounds):
        for name, fn in (("lightning", lightning), ("plain", plain)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        print(f"{name}: median {1e3 * statistics.median(ts[2:]):.1f} ms (first {1e3 * ts[0]:.0f} ms)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-checkpoint", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--classes", default="3")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fixed", action="store_true")
    args = parser.parse_args()
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint)
        return
    if args.fixed:
        fixed_cost()
        return
    import torch

    from unlearn.pipeline import run_unlearning

    ov = [
        f"checkpoint={args.checkpoint}",
        "unlearn_method=finetune",
        f"unlearn_method.epochs={args.epochs}",
        f"forget.classes=[{args.classes}]",
        "eval.probe=false",
        "eval.relearn=null",
    ]
    from cl.engine.checkpoint import load_checkpoint, resolve_checkpoint

    batch = int(load_checkpoint(resolve_checkpoint(str(args.checkpoint)))["config"]["data"]["batch_size"])
    times, steps = [], 0
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            report = run_unlearning(compose(ov, "unlearn"), Path(tmp) / "run", ov)
        times.append(float(report["seconds"]))
        steps = args.epochs * math.ceil(report["sizes"]["retain_train"] / batch)
    print(
        f"{ROOT}: finetune {args.epochs} epochs, {steps} steps, threads {torch.get_num_threads()}: "
        f"seconds {[round(t, 3) for t in times]} median {statistics.median(times):.3f} "
        f"({1e3 * statistics.median(times) / steps:.2f} ms/step)",
        flush=True,
    )


if __name__ == "__main__":
    main()
