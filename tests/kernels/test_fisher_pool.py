"""Task-parallel rules (kernels.fisher_pool): worker threads, thread counts restored, errors surface, bounded queue."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from kernels import fisher_diagonal
from kernels import fisher_rules as rules
from kernels.fisher_pool import RulePool
from tests.kernels.models import ConvNet, rel_err

torch.set_num_threads(1)


def _data(n: int = 6, seed: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=gen)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


def _new_thread_count() -> int:
    """The intra-op thread count a fresh thread starts with (PyTorch's process-wide default)."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


@pytest.mark.parametrize("workers", [None, 1, 2])
def test_rules_on_workers_equal_inline_and_counts_restored(
    workers: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 2 intra-op threads the conv rules run on worker threads at one intra-op thread each, the Linear-on-vectors
    rule in the calling thread on both; the result equals the inline rules and the reference; the caller's count and
    the process default come back."""
    torch.manual_seed(0)
    model = ConvNet().double()
    data = _data()
    main = threading.get_ident()
    seen: dict[str, list[tuple[int, int]]] = {"conv2d_rule": [], "linear_rule": []}
    for name in seen:
        original = getattr(rules, name)

        def spy(*args: object, original=original, calls=seen[name]) -> bool:  # noqa: ANN001
            calls.append((threading.get_ident(), torch.get_num_threads()))
            if threading.get_ident() == main:
                time.sleep(0.05)  # the calling thread drains too: give the worker time to take the others
            return original(*args)

        monkeypatch.setattr(rules, name, spy)
    torch.set_num_threads(2)
    try:
        pooled = fisher_diagonal(model, data, rule_workers=workers)
        assert torch.get_num_threads() == 2
        assert _new_thread_count() == 2
        conv = seen["conv2d_rule"]
        assert conv and {n for _, n in conv} == {1}
        assert any(ident != main for ident, _ in conv)  # at least some conv rules ran on a worker
        assert seen["linear_rule"] == [(main, 2), (main, 2)]  # one per batch
        conv.clear()
        inline = fisher_diagonal(model, data, rule_workers=0)
        assert conv and {ident for ident, _ in conv} == {main}
    finally:
        torch.set_num_threads(1)
    ref = fisher_diagonal(model, data, backend="reference")
    for n in ref.diag:
        assert torch.equal(pooled.diag[n], inline.diag[n]), n
        assert rel_err(pooled.diag[n], ref.diag[n]) < 1e-5, n


def test_error_in_a_worker_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule failing on a worker thread raises in fisher_diagonal; the workers stop and the thread count is back."""
    model = ConvNet().double()

    def boom(*args: object) -> bool:
        raise RuntimeError("rule exploded")

    monkeypatch.setattr(rules, "conv2d_rule", boom)
    before = threading.active_count()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="rule exploded"):
            fisher_diagonal(model, _data(), rule_workers=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert threading.active_count() == before


def test_bounded_queue_caller_helps() -> None:
    """With the worker busy, the submitting thread runs waiting tasks itself once more than max_pending wait."""
    release = threading.Event()
    ran: list[tuple[int, int]] = []
    pool = RulePool(1, max_pending=2)
    pool.submit(lambda: (release.wait(5), ran.append((0, threading.get_ident()))))
    time.sleep(0.05)  # the worker has taken task 0 and blocks on it
    for i in range(1, 5):
        pool.submit(lambda i=i: ran.append((i, threading.get_ident())))
    by_caller = [i for i, ident in ran if ident == threading.get_ident()]
    assert by_caller == [1, 2]  # the oldest waiting tasks, so that at most 2 wait
    release.set()
    pool.drain()
    assert sorted(i for i, _ in ran) == [0, 1, 2, 3, 4]


def test_bad_rule_workers_is_named() -> None:
    with pytest.raises(ValueError, match="rule_workers=-1"):
        fisher_diagonal(ConvNet().double(), _data(), rule_workers=-1)


def test_one_pool_serves_every_batch_and_stops_with_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker threads are started once per call, not once per batch, and are gone when the call returns."""
    torch.manual_seed(0)
    model = ConvNet().double()
    data = _data(n=12)
    data = [(x[i : i + 3], y[i : i + 3]) for x, y in data for i in (0, 3)]  # four batches
    main = threading.get_ident()
    workers: set[int] = set()
    batches_on_workers: list[int] = []
    original = rules.conv2d_rule

    def spy(*args: object) -> bool:
        if threading.get_ident() != main:
            workers.add(threading.get_ident())
        else:
            time.sleep(0.02)  # leave the worker time to take rules in every batch
        return original(*args)

    monkeypatch.setattr(rules, "conv2d_rule", spy)
    started = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        batches_on_workers.append(1)
        started(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    before = threading.active_count()
    torch.set_num_threads(2)
    try:
        res = fisher_diagonal(model, data, rule_workers=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert res.n_batches == 4
    assert len(batches_on_workers) == 1 and len(workers) == 1  # one worker thread for the four batches
    assert threading.active_count() == before
    ref = fisher_diagonal(model, data, backend="reference")
    for n in ref.diag:
        assert rel_err(res.diag[n], ref.diag[n]) < 1e-5, n
