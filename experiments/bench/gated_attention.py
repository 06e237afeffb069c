"""Benchmark of GCAB's masked class-attention (``kernels.gated_class_attention``) against ungated class-attention.

Measured side by side in one process, alternating rounds (median of ``--rounds``):

* training step (forward + backward, one task token with a soft gate) of the masked block's attention, backends
  ``torch`` (the folded single-query form) and ``reference`` (the literal formula), against timm's ungated CaiT
  class-attention (``ClassAttn`` with SDPA) of the same shape. Goal: masked torch / ungated <= 1.1;
* inference over ``T`` task tokens with binarised gates of density ``--density`` (the newest token soft), one call,
  against ``T`` ungated passes. Goal: masked / (T x one ungated pass) <= 0.4.

Run it alone (2 shared CPU cores: ``flock -x /tmp/bench.lock``) and quote the ratios::

    uptime; flock -x /tmp/bench.lock python -m experiments.bench.gated_attention; uptime

GPU figures need a CUDA machine (``--device cuda``): there the Triton backend (``kernels/gated_attention_triton.py``)
is timed beside the torch one (``train_gated_triton``, ``infer_gated_triton``); measured on an H200, 2026-12-04:
experiments/bench/README.md, "On a GPU".

Measured 2026-12-03 (CPU, 1 thread; the exclusive lock was not free, so run on the shared machine at load average
~3: only the side-by-side ratios count), table in experiments/bench/README.md. Defaults (B=128, N=64+1, D=192, H=3,
T=10, random binary gates of density 0.50): training step masked / ungated SDPA 0.26, inference 0.10 x (T ungated
passes). With the trained gates of a 5 x 2 ``gcab_digits`` checkpoint (``--masks``, T=5, D=96, old-gate density 0.50):
inference 0.097 (N=64) and 0.32 (the digits shape B=32, N=16), training 0.45 and 0.91. Both goals are met by the
folded single query, which removes the (N x D x D) key/value GEMMs altogether: its cost does not depend on the gates'
values, so the kernel does not skip inactive units (skipping them would only shrink the O(D^2) folds and the
O(N D H) pass over the tokens by the gate density, and split the one batched pass for all T tokens into T gathers).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from timm.models.cait import ClassAttn

from kernels.gated_attention import gated_class_attention


def _time(fn, sync) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def trained_gates(path: str, smax: float = 800.0) -> torch.Tensor:
    """The channel gates ``m0`` (T, D) of every task token of a GCAB checkpoint as GCAB evaluates them: binarised
    ``1[sigmoid(smax e) > 0.5]`` for the old tokens, ``sigmoid(smax e)`` for the newest."""
    from cl.engine.checkpoint import load_checkpoint

    sd = load_checkpoint(path)["state_dict"]
    n = int(sd["experience_index"]) + 1
    e0 = torch.stack([sd[f"e0.{c}"].float() for c in range(n)])
    if n < 2:
        raise ValueError(f"--masks {path}: needs a checkpoint after at least 2 experiences (has {n})")
    return torch.cat(((e0[:-1] > 0).float(), torch.sigmoid(smax * e0[-1:])))


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64, help="patch tokens (the task token is added)")
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=10, help="task tokens at inference")
    ap.add_argument("--density", type=float, default=0.5, help="share of units on in the old tokens' binary gates")
    ap.add_argument(
        "--masks",
        default=None,
        help="a method=gcab checkpoint (checkpoints/task_k.ckpt): time inference with its trained gates (all its "
        "task tokens, binarised but the newest; --tasks and --dim are taken from it)",
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    trained = trained_gates(args.masks) if args.masks else None
    if trained is not None:
        args.tasks, args.dim = trained.shape
    b, n, d, h, t = args.batch, args.tokens, args.dim, args.heads, args.tasks
    attn = ClassAttn(d, num_heads=h).to(dev)
    w = [attn.q.weight, attn.k.weight, attn.v.weight, attn.proj.weight]
    x = torch.randn(b, n, d, device=dev, requires_grad=True)
    cls = torch.randn(b, 1, d, device=dev, requires_grad=True)
    m_soft = torch.sigmoid(torch.randn(1, d, device=dev)).requires_grad_(True)

    def ungated_step():
        attn(torch.cat((cls, x), dim=1)).sum().backward()

    def gated_step(backend):
        return lambda: gated_class_attention(cls, x, m_soft, *w, attn.proj.bias, h, backend=backend).sum().backward()

    gen = torch.Generator(device="cpu").manual_seed(1)
    masks = (torch.rand(t, d, generator=gen) < args.density).float().to(dev)
    masks[-1] = torch.sigmoid(torch.randn(d, generator=gen)).to(dev)
    if trained is not None:
        masks = trained.to(dev)
    xs, tokens = x.detach(), torch.randn(b, t, d, device=dev)

    @torch.no_grad()
    def ungated_inference():
        for c in range(t):
            attn(torch.cat((tokens[:, c : c + 1], xs), dim=1))

    def gated_inference(backend):
        @torch.no_grad()
        def fn():
            gated_class_attention(tokens, xs, masks, *w, attn.proj.bias, h, backend=backend)

        return fn

    cases = {
        "train_ungated_sdpa": ungated_step,
        "train_gated_torch": gated_step("torch"),
        "train_gated_reference": gated_step("reference"),
        "infer_ungated_T_passes": ungated_inference,
        "infer_gated_torch": gated_inference("torch"),
    }
    if dev.type == "cuda":  # the fused kernels run compiled on CUDA only (on CPU: the interpreter, for tests)
        cases["train_gated_triton"] = gated_step("triton")
        cases["infer_gated_triton"] = gated_inference("triton")
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, fn in cases.items():
            times[k].append(_time(fn, sync))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    out = {f"{k}_ms": v for k, v in med.items()}
    out["ratio_train_gated_torch_over_ungated"] = med["train_gated_torch"] / med["train_ungated_sdpa"]
    out["ratio_train_gated_reference_over_ungated"] = med["train_gated_reference"] / med["train_ungated_sdpa"]
    out["ratio_infer_gated_over_T_ungated"] = med["infer_gated_torch"] / med["infer_ungated_T_passes"]
    if "train_gated_triton" in med:
        out["ratio_train_gated_triton_over_ungated"] = med["train_gated_triton"] / med["train_ungated_sdpa"]
        out["ratio_infer_gated_triton_over_T_ungated"] = med["infer_gated_triton"] / med["infer_ungated_T_passes"]
    out["old_mask_density"] = float(masks[:-1].mean())
    src = f"trained gates of {args.masks}" if args.masks else f"random binary gates of density {args.density}"
    print(f"B={b} N={n}+1 D={d} H={h} T={t} device={dev} threads={args.threads} rounds={args.rounds}; {src}")
    for k, v in out.items():
        print(f"{k:45s} {v:10.3f}")
    return out


if __name__ == "__main__":
    main()
