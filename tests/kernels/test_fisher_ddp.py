"""DDP: two gloo processes on CPU, each with its shard, give the single-process Fisher (one all-reduce)."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.kernels.models import ConvNet


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(10, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 4, (10,), generator=gen)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return ConvNet().double()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        from kernels import fisher_diagonal

        x, y = _data()
        shard = slice(0, 6) if rank == 0 else slice(6, 10)  # unequal shards: the counts are reduced too
        xs, ys = x[shard], y[shard]
        batches = [(xs[i : i + 4], ys[i : i + 4]) for i in range(0, xs.shape[0], 4)]
        for mode in ("per_sample", "batch"):
            res = fisher_diagonal(_model(), batches, mode=mode)
            torch.save({"diag": res.diag, "n": res.n_samples, "b": res.n_batches}, f"{out_dir}/{mode}_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path) -> None:  # noqa: ANN001
    from kernels import fisher_diagonal

    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_worker, args=(init_file, str(tmp_path)), nprocs=2, join=True)
    x, y = _data()
    single = fisher_diagonal(_model(), [(x[:4], y[:4]), (x[4:6], y[4:6]), (x[6:], y[6:])])
    batch = fisher_diagonal(_model(), [(x[:4], y[:4]), (x[4:6], y[4:6]), (x[6:], y[6:])], mode="batch")
    for mode, ref in (("per_sample", single), ("batch", batch)):
        for rank in range(2):
            got = torch.load(os.path.join(tmp_path, f"{mode}_{rank}.pt"))
            assert got["n"] == 10 and got["b"] == 3
            for name, value in ref.diag.items():
                torch.testing.assert_close(got["diag"][name], value, rtol=1e-10, atol=0)
