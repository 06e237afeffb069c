"""``python -m unlearn.run``: unlearn a forget set from a checkpoint written by ``cl.run``.

    python -m unlearn.run checkpoint=RUN_DIR unlearn_method=ssd forget=class forget.classes=[3]
    python -m unlearn.run checkpoint=RUN/checkpoints/task_2.ckpt unlearn_method=retrain forget=task forget.experience=1
    python -m unlearn.run checkpoint=RUN_DIR unlearn_method=iau forget=random forget.fraction=0.05 reference=RETRAIN_RUN

The output goes to a new ``<checkpoint's run dir>/unlearn/<method>-<forget>-<time>_<random>/`` (``hydra.run.dir=...`` to
change it; a directory an earlier run wrote into is refused, never overwritten; a read-only run directory sends it to
``<paths.log_dir>/unlearn/<run name>/...``):
``unlearn_report.{json,csv,png}``, ``splits/*.csv`` and ``checkpoints/unlearned_task_{t}.ckpt``. Bad input exits with
status 2 and a message before any work. Heavy imports happen inside :func:`main`, so ``--help`` stays fast.

    python -m unlearn.run checkpoint=RUN_DIR trainer=ddp_cpu     # 2 gloo processes (trainer=ddp: GPUs)

runs the importances, the training baselines and ``retrain`` over DDP ranks; rank 0 alone evaluates and writes
(``unlearn/distributed.py``).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import unlearn.resolvers  # noqa: F401
from cl.resolvers import package_dir  # the training config's resolvers

EXIT_CONFIG_ERROR = 2


@hydra.main(version_base="1.3", config_path=str(package_dir() / "conf"), config_name="unlearn")
def main(cfg: DictConfig) -> float | None:
    """Compose, unlearn, report; returns the forget-test (else forget-train) accuracy for sweepers."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from unlearn.context import UnlearnConfigError
    from unlearn.pipeline import run_unlearning

    hc = HydraConfig.get()
    try:
        report = run_unlearning(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))
    except UnlearnConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    from cl.engine.distributed import is_global_zero

    if is_global_zero():  # under DDP (trainer=ddp/ddp_cpu, unlearn/distributed.py) every rank holds the same report
        print(
            f"{report['method']}: retain_test_acc={report['retain_test_acc']:.3f} "
            f"forget_train_acc={report['forget_train_acc']:.3f} seconds={report['seconds']:.2f}"
        )
        print(f"run directory: {hc.runtime.output_dir}")
    return report.get("forget_test_acc") or report.get("forget_train_acc")


if __name__ == "__main__":
    main()
