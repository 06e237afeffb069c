"""Task-parallel per-layer Fisher rules on CPU for ``kernels.fisher_fast`` (the rules are in ``kernels.fisher_rules``).

The backward of the fast backend computes input gradients only; each layer's rule (``sum_i (g_i^T x_i)^2`` and the
like) can run as soon as that layer's output gradient ``g`` exists and is independent of every other rule and of the
rest of the backward. With T intra-op threads, running every op data-parallel on T OpenMP threads scales badly: the
rules are thousands of small and medium ops (per-sample products, reductions), each a short OpenMP region. Instead
(``RulePool``), the backward runs in the calling thread on ``T - W`` intra-op threads while W Python worker threads
each run whole rules on ONE intra-op thread (torch ops release the GIL); once the backward returns, the calling
thread drains the queue too. Every thread then does single-threaded work, so no OpenMP barrier waits on a core that
is busy elsewhere.

Thread-count semantics (PyTorch with the OpenMP backend): ``torch.set_num_threads`` sets the calling thread's OpenMP
``nthreads-var`` and MKL's thread-local count, plus a process-wide default that new threads pick up on their first
op. Workers set 1 for themselves; the caller's count is restored by ``kernels.fisher_fast`` after the pass (which
also resets the process-wide default to the caller's T).

Measured (2 shared cores, quiet, ``experiments/bench/fisher.py``-style interleaved medians; fast time / training
forward+backward time at 2 intra-op threads): rules inline on one thread (``rule_workers=0``) ViT (N=256) 1.44-1.47x,
reduced ResNet-18 (N=128) 1.41x; one worker (the default, ``threads - 1``) 1.01-1.09x / 1.09x; two workers (3
threads on 2 cores) 1.13x / 1.14x. The MLP's Linear-on-vectors rules (one large product each) measured 0.9x inline
on both threads and 1.17-1.28x on the pool, hence ``RuleRunner``'s ``gemm`` case.

At most ``max_pending`` rules wait in the queue (each holds its layer's input and output gradient); beyond that the
calling thread runs the oldest waiting rule itself before the backward continues, so peak memory stays close to a
training pass.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch


class RulePool:
    """W worker threads on one intra-op thread each; ``submit`` from the backward, ``drain`` after it."""

    def __init__(self, workers: int, max_pending: int = 4) -> None:
        if workers < 1:
            raise ValueError(f"fisher_diagonal: rule_workers={workers!r} must be >= 1 for a pool")
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._errors: list[BaseException] = []
        self._max_pending = max_pending
        self._unfinished = 0  # submitted tasks not yet run to the end (by a worker or the caller)
        self._idle = threading.Condition()
        self.workers = workers
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for t in self._threads:
            t.start()

    def _run(self, task: Callable[[], None]) -> None:
        try:
            if not self._errors:
                task()
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the calling thread by wait()
            self._errors.append(exc)
        finally:
            with self._idle:
                self._unfinished -= 1
                if self._unfinished == 0:
                    self._idle.notify_all()

    def _work(self) -> None:
        torch.set_num_threads(1)
        while (task := self._tasks.get()) is not None:
            self._run(task)

    def _help(self, until_pending: int) -> None:
        """The calling thread runs waiting rules until at most ``until_pending`` remain."""
        while self._tasks.qsize() > until_pending:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            if task is None:  # cannot happen before close(); keep the sentinel for the workers
                self._tasks.put(None)
                return
            self._run(task)

    def submit(self, task: Callable[[], None]) -> None:
        with self._idle:
            self._unfinished += 1
        self._tasks.put(task)
        if self._tasks.qsize() > self._max_pending:
            self._help(self._max_pending)

    def wait(self) -> None:
        """Run every waiting rule (the calling thread helps) and wait for the running ones; the workers stay for the
        next batch. Re-raises the first error."""
        self._help(0)
        with self._idle:
            self._idle.wait_for(lambda: self._unfinished == 0)
        if self._errors:
            raise self._errors[0]

    def drain(self) -> None:
        """``wait``, then stop the workers (also when a rule failed)."""
        try:
            self.wait()
        finally:
            self.close()

    def close(self, cancel: bool = False) -> None:
        """Stop the workers after the rules already running; with ``cancel`` (error paths) waiting rules are dropped."""
        while cancel:
            try:
                dropped = self._tasks.get_nowait()
            except queue.Empty:
                break
            if dropped is not None:
                with self._idle:
                    self._unfinished -= 1
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join()


class RuleRunner:
    """Where, and on how many intra-op threads, each rule of one backward runs (see the module docstring).

    * ``gemm`` rules (Linear on vectors: one large product ``(G*G)^T (X*X)``, which scales with threads) run inline on
      all of the caller's threads;
    * the others go to a ``RulePool`` of ``workers`` threads, created at the first such rule, which also lowers the
      calling thread (the backward) to ``threads - workers`` intra-op threads; with ``workers == 0`` they run inline
      on ``single`` intra-op threads (``kernels.fisher_fast.RULE_THREADS`` on CPU).
    ``finish`` (after the backward) waits for the pool's rules; ``close`` (always) restores the caller's thread count.
    The pool lives in ``home`` (an object with a ``pool`` attribute: the plan of one ``fisher_diagonal`` call) and
    serves every batch of the call (starting W threads per batch cost up to a few percent of a small model's batch);
    its owner closes it at the end of the call, or ``close`` does when a batch failed.
    """

    def __init__(self, workers: int, single: int, home: object | None = None) -> None:
        self.threads = torch.get_num_threads()
        self.workers = workers
        self.single = single
        self.home = home
        self.pool: RulePool | None = None
        self.finished = False

    def _inline(self, task: Callable[[], None], threads: int) -> None:
        current = torch.get_num_threads()
        if threads != current:
            torch.set_num_threads(threads)
        try:
            task()
        finally:
            if threads != current:
                torch.set_num_threads(current)

    def run(self, task: Callable[[], None], gemm: bool) -> None:
        if gemm:
            self._inline(task, self.threads)
        elif self.workers:
            if self.pool is None:
                kept = getattr(self.home, "pool", None)
                self.pool = kept if kept is not None and kept.workers == self.workers else RulePool(self.workers)
                if self.home is not None and kept is not self.pool:
                    if kept is not None:
                        kept.close()
                    self.home.pool = self.pool
                torch.set_num_threads(max(1, self.threads - self.workers))
            self.pool.submit(task)
        else:
            self._inline(task, self.single)

    def finish(self) -> None:
        if self.pool is not None:
            torch.set_num_threads(1)  # the calling thread joins the workers on one intra-op thread
            if self.home is None:
                self.pool.drain()
            else:
                self.pool.wait()
        self.finished = True

    def close(self) -> None:
        if self.pool is not None and (self.home is None or not self.finished):  # not kept, or the batch failed
            self.pool.close(cancel=True)
            if self.home is not None and getattr(self.home, "pool", None) is self.pool:
                self.home.pool = None
        self.pool = None
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


__all__ = ["RulePool", "RuleRunner"]
