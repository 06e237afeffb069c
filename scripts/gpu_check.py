"""``make gpu-check``: every GPU test and GPU benchmark of the repository in one call, at most 8 minutes on one GPU,
then one summary table (step, status, seconds, what it found).

Steps (each a subprocess with its own time limit; the limits add up to the budget, and a step that would end after the
overall deadline is skipped):

1. ``device``: the CUDA device, capability, bf16 support, Triton's version;
2. ``pytest -m gpu``: every test marked ``gpu`` (the compiled Triton Fisher kernels and GCAB's gated class-attention
   kernels against their references, RegLoRA's sparse penalty on a bf16 Llama), with ``TRITON_INTERPRET`` unset; then,
   as their own steps, every method through two experiences on the GPU (``tests/methods/test_every_method_config.py``)
   and unlearning on the GPU (``tests/unlearn/test_unlearn_gpu.py``: finetune with Lightning's Trainer and the
   relearning attack against the CPU run, SSD);
3. ``cl.run trainer=gpu``: the offline default experiment (CODA-Prompt on digits, with its finetune reference) on the
   GPU, fp32;
4. ``cl.run bf16``: finetune on digits with ``trainer.precision=bf16-mixed``;
5. ``cl.run trainer=ddp (nccl)``: EWC on digits (its Fisher through the Triton kernels on CUDA) under DDP with NCCL,
   on ``min(2, GPUs)`` devices (one GPU still exercises NCCL's process group);
6. ``bench fisher --device cuda``: ``experiments/bench/fisher.py`` on the tiny ViT (ratios to a training pass);
7. ``bench prompt_step --device cuda``: ``experiments/bench/prompt_step.py`` (a CODA-Prompt step vs finetune's);
8. ``bench gated_attention --device cuda``: ``experiments/bench/gated_attention.py`` (GCAB's masked class-attention,
   torch and Triton backends, against ungated SDPA class-attention).

Without a CUDA device it prints the table with every step ``skipped (no CUDA device)`` and exits 0 (``--require-gpu``:
exit 2). Exit 1 when a step failed or timed out. ``--list`` prints the commands without running them. Logs of every
step go to ``--out`` (default ``logs/gpu_check/<time>/``); ``--only PREFIX ...`` runs only the steps so named (a rerun).

First run, 2026-12-04, one NVIDIA H200 (torch 2.11.0+cu130, Triton 3.6.0, Lightning 2.6.6): 205 s; it found two
faults, fixed in 7d84263 (RegLoRA's key positions stayed on the CPU beside CUDA adapters; timm 1.0.29 loaded a local
state-dict file through the ViT's npz loader), and the rerun of those steps passed (14 GPU tests, the default
experiment). Timings: experiments/bench/README.md ("On a GPU" sections).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BUDGET_S = 480  # the whole check on one GPU
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Step:
    name: str
    cmd: list[str]
    limit_s: int
    expect: str | None = None  # a file (relative to the step's folder) that must exist afterwards
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    name: str
    status: str  # ok | FAIL | TIMEOUT | skipped (...)
    seconds: float = 0.0
    note: str = ""


DEVICE_PROBE = (
    "import torch, importlib.util as u; d = torch.cuda.get_device_properties(0); "
    "t = u.find_spec('triton') and __import__('triton').__version__; "
    "print(f'{torch.cuda.device_count()} x {d.name}, cc {d.major}.{d.minor}, {d.total_memory / 2**30:.0f} GiB, '"
    "f'bf16 {torch.cuda.is_bf16_supported()}, torch {torch.__version__}, triton {t}')"
)


def steps(out: Path, n_gpus: int) -> list[Step]:
    """The checks in order; limits sum to at most :data:`BUDGET_S`."""
    run = [PY, "-m", "cl.run", "trainer.enable_progress_bar=false", "logger=none"]
    small = ["~experiment", "scenario.n_experiences=2", "trainer.max_epochs=1"]
    ddp = max(1, min(2, n_gpus))
    fisher = ["experiments/bench/fisher.py", "--device", "cuda", "--models", "vit", "--threads", "1", "--repeats", "3"]
    gated = ["-m", "experiments.bench.gated_attention", "--device", "cuda", "--rounds", "7"]
    pytest = [PY, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    every, every_file = "test_method_trains_two_experiences_on_a_gpu", "tests/methods/test_every_method_config.py"
    unlearn_file = "tests/unlearn/test_unlearn_gpu.py"
    return [
        Step("device", [PY, "-c", DEVICE_PROBE], 15),
        Step(
            "pytest -m gpu (kernels, methods' GPU cases)",
            [*pytest, "tests", "-k", f"not {every} and not unlearn_gpu"],
            90,
        ),
        Step("pytest -m gpu (every method, 2 experiences)", [*pytest, every_file], 115),
        Step("pytest -m gpu (unlearning: finetune, relearn, SSD)", [*pytest, unlearn_file], 40),
        Step(
            "cl.run trainer=gpu (default)",
            [*run, "trainer=gpu", f"hydra.run.dir={out / 'default'}"],
            35,
            expect="default/metrics.json",
        ),  # fmt: skip
        Step(
            "cl.run bf16-mixed",
            [*run, *small, "trainer=gpu", "trainer.precision=bf16-mixed", f"hydra.run.dir={out / 'bf16'}"],
            35,
            expect="bf16/metrics.json",
        ),  # fmt: skip
        Step(
            f"cl.run trainer=ddp nccl x{ddp}",
            [*run, *small, "method=ewc", "trainer=ddp", f"trainer.devices={ddp}", f"hydra.run.dir={out / 'ddp'}"],
            40,
            expect="ddp/metrics.json",
        ),  # fmt: skip
        Step("bench fisher --device cuda", [PY, *fisher], 40),
        Step("bench prompt_step --device cuda", [PY, "-m", "experiments.bench.prompt_step", "--device", "cuda"], 35),
        Step("bench gated_attention --device cuda", [PY, *gated], 35),
    ]


def cuda_devices() -> int:
    """Number of CUDA devices torch sees (0 without a GPU or without a CUDA build)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:110] if lines else ""


def run_steps(plan: list[Step], out: Path, budget_s: float) -> list[Result]:
    """Run ``plan`` one step after another within ``budget_s`` seconds; logs in ``out/<i>.log``."""
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels on the GPU
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    results = []
    for i, step in enumerate(plan):
        left = deadline - time.monotonic()
        if left < step.limit_s:
            results.append(Result(step.name, "skipped (budget spent)"))
            continue
        start = time.monotonic()
        log = out / f"{i}_{step.name.split()[0].replace('.', '_')}.log"
        try:
            proc = subprocess.run(
                step.cmd, cwd=ROOT, env={**env, **step.env}, capture_output=True, text=True, timeout=step.limit_s
            )
            text, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as err:
            text = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            code = None
        log.write_text(text)
        seconds = time.monotonic() - start
        if code is None:
            results.append(Result(step.name, "TIMEOUT", seconds, f"over {step.limit_s} s; see {log.name}"))
        elif code != 0:
            results.append(Result(step.name, "FAIL", seconds, f"exit {code}: {_last_line(text)}"))
        elif step.expect and not (out / step.expect).is_file():
            results.append(Result(step.name, "FAIL", seconds, f"no {step.expect}"))
        else:
            results.append(Result(step.name, "ok", seconds, _last_line(text)))
    return results


def table(results: list[Result], header: str) -> str:
    width = max(len(r.name) for r in results)
    lines = [header, f"{'step'.ljust(width)}  {'status':<24}{'seconds':>8}  result"]
    lines.append("-" * (width + 2 + 24 + 8 + 2 + 40))
    for r in results:
        lines.append(f"{r.name.ljust(width)}  {r.status:<24}{r.seconds:8.1f}  {r.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the steps' logs and runs")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all steps together")
    parser.add_argument("--require-gpu", action="store_true", help="exit 2 when no CUDA device is found")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    parser.add_argument(
        "--only", nargs="+", metavar="PREFIX", help="run only the steps whose name starts with one of these (a rerun)"
    )
    args = parser.parse_args(argv)
    out = (args.out or ROOT / "logs" / "gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    n_gpus = cuda_devices()
    plan = steps(out, n_gpus)
    if args.only:
        plan = [s for s in plan if s.name.startswith(tuple(args.only))]
        if not plan:
            parser.error(f"--only {' '.join(args.only)}: no step starts with that; see --list")
    if args.list:
        for step in plan:
            print(f"[{step.limit_s:>3} s] {step.name}: {' '.join(step.cmd)}")
        return 0
    if n_gpus == 0:
        results = [Result(s.name, "skipped (no CUDA device)") for s in plan]
        print(table(results, "gpu-check: no CUDA device here; nothing ran (run `make gpu-check` on a GPU machine)"))
        return 2 if args.require_gpu else 0
    results = run_steps(plan, out, args.budget)
    total = sum(r.seconds for r in results)
    print(table(results, f"gpu-check on {n_gpus} CUDA device(s): {total:.0f} s, logs in {out}"))
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
