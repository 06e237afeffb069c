"""RegLoRA's penalty: gathered at the key positions (cl/modules/lora_keys.py) vs the reference's full ``B @ A``
(github jinpeng0528/SEFE, ``llava/model/language_model/modeling_llama.py``: ``(lora_B @ lora_A)[rows, cols].abs()
.mean()`` in every decoder layer at every step), as a fraction of one training step of the adapted linear layer.

One step = forward and backward of a peft LoRA ``Linear`` (frozen base, float32) on ``tokens`` input rows that need
their gradient (as inside a network), + the penalty's forward and backward. Timed side by side in one process,
interleaved over ``--repeats`` rounds (medians): the step without penalty, the gathered penalty by its two backends
(``kernels/key_penalty.py``: the fused C++ pass and the sparse CSR products), the full-form penalty.
Key positions: random ``B``, ``A`` ranked as after a trained experience, after 1 experience (2 %) and after 7 (the
reference's eighth task: 7 cumulative lists with duplicates). Memory: the stored positions (int32 flat indices, the
state dict) vs the reference's int64 ``(row, col)`` pairs, the gathered form's per-experience CSR pattern, and the full
form's transient ``d_out x d_in`` matrices (``B @ A`` and its gradient, float32).

Shapes: a ViT-B/16 MLP ``fc1`` (3072 x 768, rank 8, a batch of 16 images = 3152 tokens) and a LLaMA-7B
``gate_proj`` (11008 x 4096, rank 128 as the reference, one 2048-token sequence; the reference trains 16 sequences per
GPU, which makes the step 16x longer and the fractions 16x smaller).

    python experiments/bench/reglora.py [--repeats 3] [--threads 2] [--shapes vit_b llama7b] [--experiences 1 7]

Measured 2026-12-03 21:37 (``--repeats 3 --threads 1``, CPU, float32, under the exclusive benchmark lock, load 3-7
from other engineers' jobs; every number of a row from one process, interleaved with a rotating order, medians of 3).
Fractions are penalty / (step + penalty), wall time (CPU time for the fused kernel after the semicolon):

| shape | exps | positions (unique) | step s | fused C++ s (%; CPU %) | sparse CSR s (%) | full B@A s (%) |
|---|---|---|---|---|---|---|
| ViT-B fc1 r8, 3152 tok | 1 | 47,185 | 0.927 | 0.0016 (0.17; 0.27) | 0.0037 (0.40) | 0.0146 (1.55) |
| ViT-B fc1 r8, 3152 tok | 7 | 330,295 (311,208) | 0.951 | 0.0048 (0.51; 0.79) | 0.0105 (1.09) | 0.0596 (5.90) |
| 7B gate r128, 2048 tok | 1 | 901,775 | 7.37 | 0.076 (1.02; 0.92) | 0.079 (1.07) | 1.17 (13.7) |
| 7B gate r128, 2048 tok | 7 | 6,312,425 (5,946,546) | 7.72 | 0.340 (4.22; 4.44) | 0.759 (8.95) | 2.62 (25.4) |

The <= 3 % goal holds on the ViT-B shape and on the 7B shape after one experience; after seven experiences (14 % of
the 7B matrix listed) the fused pass costs 4.2 % of a 2048-token step (the sparse CSR products 9.0 %, the reference's
full form 25 %): missed by 1.2 points on CPU. The reference trains 16 sequences per GPU, which makes the step ~16x
longer (~0.3 %). Gradients of every form agree to 2e-6 (relative). Memory: the stored positions (int32 flat indices)
are 1/4 of the reference's int64 pairs on every row; the per-experience CSR working pattern (~20 bytes per unique
position) is built once per experience and replaces the full form's transient 11008x4096 float32 matrices (2 x 180 MB
per matrix).

Where the fused pass goes (7B, 7 experiences, 1 thread, CPU time): the values alone 0.07-0.085 s, with both gradients
0.185 s. Tiling the columns so that A^T and dA^T of a tile stay in L2 took the pass from 0.25 to 0.185 s (the 2 MB
A^T and dA^T of the layer went to L3 untiled); computing four positions' dot products at a time and unrolling the
common ranks at compile time gave ~10 %. Before the kernel, the sparse products spent ``sampled_addmm`` 0.33 s,
``csr @ A^T`` 0.50 s, ``csr_t @ B`` 0.82-0.91 s and the column-major permutation 0.21-0.24 s (load ~12); a dense form
(``B @ A`` and two GEMMs in backward) was slower still (2.74 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from cl.modules.lora import ExperienceLoRA
from cl.modules.lora_keys import KeyPositions

SHAPES = {  # name: (d_out, d_in, rank, tokens per step)
    "vit_b": (3072, 768, 8, 16 * 197),
    "llama7b": (11008, 4096, 128, 2048),
}


def full_penalty(A: torch.Tensor, B: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """The reference's per-matrix term: ``(B @ A)[rows, cols].abs().mean()``."""
    return (B @ A)[pairs[:, 0], pairs[:, 1]].abs().mean()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_shape(name: str, experiences: int, repeats: int) -> dict[str, float]:
    d_out, d_in, rank, tokens = SHAPES[name]
    g = torch.Generator().manual_seed(0)
    layer = nn.Sequential()
    layer.add_module("proj", nn.Linear(d_in, d_out, bias=False))
    lora = ExperienceLoRA(layer, ["proj"], rank=rank, alpha=2 * rank, dropout=0.0)
    keys = KeyPositions({"proj": (d_out, d_in)}, slots=experiences, fraction=0.02)
    for t in range(experiences):  # positions of trained-looking updates (random low-rank B A)
        A_t = torch.randn(rank, d_in, generator=g) / d_in**0.5  # noqa: N806
        B_t = torch.randn(d_out, rank, generator=g) / rank**0.5  # noqa: N806
        keys.identify(t, {"proj": (A_t, B_t)})
    lora.attach()
    A, B = lora.factors()["proj"]  # noqa: N806
    with torch.no_grad():
        B.normal_(0, 0.01, generator=g)
    pairs = keys.pairs("proj")
    pattern_seconds = _timed(lambda: keys.patterns(False))
    x = torch.randn(tokens, d_in, generator=g, requires_grad=True)
    grad_out = torch.randn(tokens, d_out, generator=g)

    def step() -> None:
        layer(x).backward(grad_out)

    def gathered_cpp() -> None:
        keys.penalty({"proj": (A, B)}, backend="cpp").backward()

    def gathered_torch() -> None:
        keys.penalty({"proj": (A, B)}, backend="torch").backward()

    def full() -> None:
        full_penalty(A, B, pairs).backward()

    fns = {"step": step, "cpp": gathered_cpp, "torch": gathered_torch, "full": full}
    grads = {}
    for k in ("cpp", "torch", "full"):  # same value and gradient before timing
        A.grad = B.grad = None
        fns[k]()
        grads[k] = (A.grad.clone(), B.grad.clone())
    err = {
        k: max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(grads[k], grads["full"], strict=True))
        for k in ("cpp", "torch")
    }
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):  # round 0 warms up; the order rotates every round
        order = list(fns)[r % 4 :] + list(fns)[: r % 4]
        for k in order:
            A.grad = B.grad = x.grad = None
            c0 = time.process_time()
            t = _timed(fns[k])
            if r:
                wall[k].append(t)
                cpu[k].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    unique = keys.patterns(False)["proj"].col.numel()
    pattern_bytes = sum(
        t.numel() * t.element_size()
        for t in (lambda p: (p.crow, p.col, p.count, p.crow_t, p.row_t, p.perm))(keys.patterns(False)["proj"])
    )
    return {
        "shape": f"{d_out}x{d_in} r{rank} tokens {tokens}",
        "experiences": experiences,
        "positions": int(pairs.shape[0]),
        "unique_positions": unique,
        "step_s": med["step"],
        "cpp_s": med["cpp"],
        "torch_s": med["torch"],
        "full_s": med["full"],
        **{f"{k}_fraction_of_step": med[k] / (med["step"] + med[k]) for k in ("cpp", "torch", "full")},
        **{f"{k}_cpu_fraction_of_step": med_cpu[k] / (med_cpu["step"] + med_cpu[k]) for k in ("cpp", "torch", "full")},
        "full_over_cpp": med["full"] / med["cpp"],
        "torch_over_cpp": med["torch"] / med["cpp"],
        "pattern_build_s": pattern_seconds,
        "grad_rel_diff_cpp": err["cpp"],
        "grad_rel_diff_torch": err["torch"],
        "positions_bytes_int32": int(pairs.shape[0]) * 4,
        "positions_bytes_int64_pairs": int(pairs.shape[0]) * 16,
        "pattern_bytes": pattern_bytes,
        "full_transient_bytes": 2 * d_out * d_in * 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--experiences", nargs="+", type=int, default=[1, 7])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for s in args.shapes:
        for e in args.experiences:
            rows.append(bench_shape(s, e, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        "| shape | exps | positions (unique) | step s | fused C++ s (% of step; CPU-time %) "
        "| sparse CSR s (% of step) | full B@A s (% of step) | int32 / int64-pair bytes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} | {r['experiences']} | {r['positions']:,} ({r['unique_positions']:,}) | {r['step_s']:.3f} "
            f"| {r['cpp_s']:.4f} ({100 * r['cpp_fraction_of_step']:.2f} %; "
            f"{100 * r['cpp_cpu_fraction_of_step']:.2f} %) "
            f"| {r['torch_s']:.4f} ({100 * r['torch_fraction_of_step']:.2f} %) "
            f"| {r['full_s']:.4f} ({100 * r['full_fraction_of_step']:.2f} %) "
            f"| {r['positions_bytes_int32'] / r['positions_bytes_int64_pairs']:.2f} |"
        )


if __name__ == "__main__":
    main()
