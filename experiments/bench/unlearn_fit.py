"""Benchmark: the seconds a training baseline reports (``finetune``, 5 epochs, one class forgotten), for comparing two
checkouts of the training loop (e.g. the plain loop before and Lightning's ``Trainer`` after, unlearn/training.py).

    python experiments/bench/unlearn_fit.py --make-checkpoint RUN_DIR   # once: the tests' tiny digits checkpoint
    flock -w 600 -x /tmp/bench.lock sh -c 'uptime; for tree in OLD NEW; do OMP_NUM_THREADS=1 PYTHONPATH=$tree \
        python $tree/experiments/bench/unlearn_fit.py --checkpoint RUN_DIR --classes 3 --repeats 3; done; uptime'

Each repeat is one :func:`unlearn.pipeline.run_unlearning` (probe and relearning attack off) into a fresh directory;
the reported ``seconds`` are the method's ``unlearn`` call alone, as every unlearning report states them. Printed: every
repeat's seconds, the median, the number of optimizer steps and the torch thread count. Results: the module docstring of
unlearn/training.py.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-checkpoint", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--classes", default="3")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint)
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
