"""Cost of ``+callbacks=retention`` on the default experiment (``python -m cl.run``), side by side.

Runs the default experiment (CODA-Prompt on digits, with its finetune reference run) ``--rounds`` times with and
without the callback, alternating which goes first, each in a fresh ``python -m cl.run`` process with one torch thread,
and prints per round: the wall time of each process, the callback's own scoring time (``retention_seconds`` in
``metrics.json``) as a fraction of its run's wall time, and the wall ratio with/without. The within-run fraction is the
number to quote on a shared machine (it does not depend on what else runs between the two processes).

    python experiments/bench/retention_cost.py --rounds 3 [extra cl.run overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_once(run_dir: Path, extra: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cl.run", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args, extra = parser.parse_known_args(argv)
    print(f"load before: {os.getloadavg()[0]:.2f}")
    fractions, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            walls: dict[bool, float] = {}
            for with_cb in order:
                run_dir = Path(tmp) / f"r{r}_{int(with_cb)}"
                walls[with_cb] = run_once(run_dir, [*extra, *(["+callbacks=retention"] if with_cb else [])])
                if with_cb:
                    metrics = json.loads((run_dir / "metrics.json").read_text())
                    fraction = metrics["retention_seconds"] / walls[with_cb]
            fractions.append(fraction)
            ratios.append(walls[True] / walls[False])
            print(
                f"round {r}: wall without {walls[False]:.1f} s, with {walls[True]:.1f} s (ratio {ratios[-1]:.3f}); "
                f"scoring {fraction * 100:.2f}% of the run's wall time; load {os.getloadavg()[0]:.2f}"
            )
    print(f"median scoring fraction {statistics.median(fractions) * 100:.2f}%, median wall ratio "
          f"{statistics.median(ratios):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
