"""``python -m cl.run``: train a continual-learning method over a task stream.

    python -m cl.run                                   # the offline default experiment (digits, tiny ViT)
    python -m cl.run experiment=NAME key=value ...     # a preset from conf/experiment/ with overrides
    python -m cl.run resume=RUN_DIR                    # continue after the last completed experience
    python -m cl.run -m hydra/launcher=slurm seed=0,1,2
    python -m cl.run trainer=ddp trainer.devices=4      # multi-GPU DDP (cl/engine/distributed.py)

Preemption: a SIGTERM while training exits with 143 once the completed experiences are checkpointed; running the
same command into the same run dir resumes. Ctrl-C stops the same way (exit 130). Inside a sweep (``-m``), a job
with bad input is recorded as failed (``failed.json`` in its directory), the other jobs run, and the sweep exits 1.
``requeue_on_preempt=true`` inside a SLURM job first calls ``scontrol requeue`` (needed after
``scancel --signal=TERM``; submitit's USR2 path requeues by itself).

Heavy imports (torch, lightning, timm, avalanche) happen inside :func:`main`, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cl.resolvers import package_dir  # registers the resolvers conf/ uses

EXIT_CONFIG_ERROR = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a job ended by SIGTERM
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C)


class JobFailed(RuntimeError):
    """A sweep job stopped by bad input: Hydra records the job as failed and runs the next ones; the sweep then ends
    with exit status 1 naming the first failed job (every failure is in its job's ``failed.json``)."""


@hydra.main(version_base="1.3", config_path=str(package_dir() / "conf"), config_name="cl")
def main(cfg: DictConfig) -> float | None:
    """Compose, build and run; returns the final average accuracy (for Hydra sweepers)."""
    from cl.engine.interrupt import ctrl_c_as_sigterm
    from cl.engine.loop import Preempted
    from cl.experiment import ConfigurationError, is_multirun, run_experiment

    try:
        with ctrl_c_as_sigterm() as ctrl_c:
            metrics = run_experiment(cfg)
    except ConfigurationError as err:
        print(f"error: {err}", file=sys.stderr)
        if is_multirun():
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            raise JobFailed(
                f"job {hc.job.num} ({' '.join(hc.overrides.task)}) failed: {err} [recorded in "
                f"{hc.runtime.output_dir}/failed.json]; the other jobs ran (python -m experiments.aggregate lists them)"
            ) from None
        sys.exit(EXIT_CONFIG_ERROR)
    except Preempted as err:
        if ctrl_c.pressed:
            print(f"interrupted (Ctrl-C): {err}", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        print(f"preempted: {err}", file=sys.stderr)
        if cfg.get("requeue_on_preempt", False):  # a SLURM job signalled with `scancel --signal=TERM` goes back
            from cl.engine.distributed import requeue_slurm_job  # to the queue and resumes in the same run dir

            requeue_slurm_job()
        sys.exit(EXIT_PREEMPTED)
    return metrics.get("avg_acc")


if __name__ == "__main__":
    main()
