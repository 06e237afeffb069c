"""Why is k-FPF far from ER? Measurements on a finished k-FPF (or ER) run of the kfpf_paper study.

    python -m experiments.kfpf_paper.diagnose RUN_DIR [--iterations 35 100 300] [--out FILE.json]

From the run's resolved ``config.yaml`` and its last ``checkpoints/task_{T-1}.ckpt`` it reports:

* schedule: the k-FPF trigger steps against the experience boundaries (``metrics.json``);
* buffer: items per class and per experience (reservoir sampling should be ~uniform over the stream);
* the final model's test accuracy per experience, and its CE / accuracy on the buffer;
* FPF capacity: from the final weights, more FPF on the buffer (same lr, batch and optimizer as the run) with the run's
  modules for each ``--iterations`` value, and with every parameter trainable for the largest one; test accuracy after
  each. If more FPF steps or more modules close the gap to ER, the trigger budget or the module choice is what limits
  k-FPF; if not, the features learnt without replay are.

Not a test; it only reads the run folder (nothing is written there).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def _buffer_fit(method: Any) -> dict[str, float]:
    buf = method.buffer
    n = len(buf)
    method.eval()
    with torch.no_grad():
        logits = method.apply_mask(method(buf.x[:n]), method.seen_classes)
    return {
        "buffer_ce": float(F.cross_entropy(logits, buf.y[:n])),
        "buffer_acc": float((logits.argmax(1) == buf.y[:n]).float().mean()),
    }


def diagnose(run_dir: Path, iterations: list[int]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from cl.engine.checkpoint import load_checkpoint
    from cl.engine.evaluate import evaluate_stream
    from cl.experiment import build
    from cl.modules.fpf import FPFOptions, fpf_finetune
    from cl.modules.fpf_select import method_units, resolve_selection

    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stream, method = build(cfg)
    method.setup_stream(stream)
    last = len(stream) - 1
    payload = load_checkpoint(run_dir / "checkpoints" / f"task_{last}.ckpt")
    method.load_state_dict(payload["state_dict"])
    evaluate = lambda m: [round(a, 4) for a in evaluate_stream(m, stream, 256, "cpu")[0]]  # noqa: E731
    sizes = [len(e.train) for e in stream.experiences]
    steps = [-(-n // int(cfg.data.batch_size)) * int(cfg.trainer.max_epochs) for n in sizes]
    out: dict[str, Any] = {
        "run": str(run_dir),
        "method": metrics.get("method"),
        "experience_end_steps": [sum(steps[: i + 1]) for i in range(len(steps))],
        "trigger_steps": metrics.get("fpf_trigger_steps"),
        "fpf_modules": metrics.get("fpf_modules"),
        "buffer_per_class": torch.bincount(method.buffer.y[: len(method.buffer)], minlength=10).tolist(),
        "buffer_per_experience": torch.bincount(method.buffer.experience[: len(method.buffer)]).tolist(),
        "final_test_acc": evaluate(method),
        **_buffer_fit(method),
    }
    opts = getattr(method, "fpf_opts", None) or FPFOptions(iterations=1, lr=0.05, batch_size=int(cfg.data.batch_size))
    modules = resolve_selection(method, getattr(method, "selection", "default"))
    variants = [("run_modules", modules, it) for it in iterations]
    variants.append(("all_parameters", list(method_units(method)), max(iterations)))
    out["more_fpf"] = []
    for name, units, its in variants:
        m = copy.deepcopy(method)
        torch.manual_seed(0)
        o = FPFOptions(
            iterations=its, lr=opts.lr, momentum=opts.momentum, batch_size=opts.batch_size,
            optimizer=opts.optimizer, kd_beta=opts.kd_beta,
        )  # fmt: skip
        fpf_finetune(m, m.buffer, units, o)
        acc = evaluate(m)
        row = {"units": name, "iterations": its, "test_acc": acc, "avg_acc": round(sum(acc) / len(acc), 4)}
        out["more_fpf"].append({**row, **_buffer_fit(m)})
    return out


def main(argv: list[str] | None = None) -> int:
    prog = "python -m experiments.kfpf_paper.diagnose"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--iterations", type=int, nargs="+", default=[35, 100, 300])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = diagnose(args.run_dir, args.iterations)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
