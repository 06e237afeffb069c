"""Benchmark: time per training step and peak memory of ``coda_prompt`` vs ``finetune`` on the same tiny ViT and batch.

CODA-Prompt runs the frozen ViT twice per step (the no-grad query pass, then the prompted pass whose backward goes
through the frozen blocks down to block 0 but computes no weight gradients); fine-tuning runs it once with weight
gradients everywhere. The issue's goal: CODA-Prompt's step at most 2.2x fine-tuning's.

Memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) during the steps; on CPU an exact count of
what a step must hold: the bytes of the tensors autograd saves for backward (``saved_tensors_hooks``) plus
parameters, gradients and Adam's two moments of the trained parameters.

    python -m experiments.bench.prompt_step [--batch 32] [--steps 20] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from typing import Any


def _methods(in_chans: int, img: int, num_classes: int) -> dict[str, Any]:
    import torch

    from cl.backbones import Backbone
    from cl.methods.coda_prompt import CodaPrompt
    from cl.methods.finetune import Finetune

    def vit() -> Backbone:
        torch.manual_seed(0)
        return Backbone(
            "vit_tiny_patch16_224", in_chans=in_chans, img_size=img, patch_size=4, embed_dim=96, depth=4, num_heads=3
        )

    adam = partial(torch.optim.Adam, lr=1e-3)
    coda = CodaPrompt(vit(), num_classes, adam, prompt_layers=[0, 1, 2, 3], pool_size=20, prompt_length=8)
    coda.prompt.set_num_tasks(5)
    coda.prompt.start_task(2)  # a middle experience: past, current and unused components
    return {"finetune": Finetune(vit(), num_classes, adam), "coda_prompt": coda}


def _saved_bytes(method: Any, x: Any, y: Any) -> int:
    import torch

    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        method.compute_loss(x, y, (x, y))
    return total


def bench(method: Any, x: Any, y: Any, steps: int, device: str) -> dict[str, float]:
    import torch

    method.to(device).train()
    method.current_classes[:5] = True
    method.seen_classes[:5] = True
    params = method.trainable_parameters()
    opt = torch.optim.Adam(params, lr=1e-3)

    def step() -> None:
        loss = method.compute_loss(x, y, (x, y))
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    out = {"ms_per_step_median": 1000 * times[len(times) // 2], "ms_per_step_min": 1000 * times[0]}
    n_train = sum(p.numel() for p in params)
    if device == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        state = sum(p.numel() * p.element_size() for p in method.parameters()) + 3 * 4 * n_train  # + grad, 2 moments
        out["peak_mem_mb"] = (_saved_bytes(method, x, y) + state) / 2**20
    out["trained_params"] = float(n_train)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="coda_prompt vs finetune: time per training step and peak memory")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 16, 16, device=args.device)
    y = torch.randint(0, 5, (args.batch,), device=args.device)
    results = {name: bench(m, x, y, args.steps, args.device) for name, m in _methods(1, 16, 10).items()}
    ratio = results["coda_prompt"]["ms_per_step_median"] / results["finetune"]["ms_per_step_median"]
    report = {"batch": args.batch, "device": args.device, **results, "time_ratio_coda_over_finetune": ratio}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
