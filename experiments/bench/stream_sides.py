"""The sides of experiments/bench/stream_overhead.py (its docstring describes them): the engine as ``cl.run`` runs
it, a bare Lightning ``Trainer.fit`` per experience, and a hand-written loop, each a generator that trains one
experience per ``next`` and yields its (wall, CPU) seconds, so that the bench can interleave the sides experience by
experience; ``drain`` runs what is left and returns its timings and the trained method, which ``check_identical``
compares bit for bit across sides."""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tests.helpers import compose_config

WORKLOADS = {
    # the default experiment (conf/cl.yaml: experiment=coda_digits, 2 experiences x 5 classes) without its reference
    # runs; ``--workload coda5`` is the 5 x 2 stream it had before 2026-12-03
    "coda": [
        "experiment=coda_digits",
        "callbacks.finetune_reference=null",
        "callbacks.simplecil_reference=null",
        "callbacks.linear_probe_reference=null",
        "data.batch_size=32",
    ],
    "coda5": [
        "experiment=coda_digits",
        "scenario.n_experiences=5",
        "callbacks.finetune_reference=null",
        "callbacks.simplecil_reference=null",
        "callbacks.linear_probe_reference=null",
        "data.batch_size=32",
    ],
    "cnn": ["backbone=cnn_small", "method=finetune", "trainer.max_epochs=2", "data.batch_size=32"],
}
COMMON = ["logger=none"]


class Setup:
    """The composed configs, the stream and the untrained method, built once: every round trains a deep copy of the
    same initial method on the same stream (building them per round cost more time than the training itself)."""

    def __init__(self, workload: str, extra: list[str], tmp: Path) -> None:
        from cl.experiment import build

        self.cfg = compose_config(WORKLOADS[workload] + COMMON, tmp, shrink=False)
        self.engine_cfg = compose_config(WORKLOADS[workload] + COMMON + extra, tmp, shrink=False)
        off = [*extra, "callbacks.flops=null"]  # the ``engine_off`` side (``--flops-off-side``)
        self.engine_off_cfg = compose_config(WORKLOADS[workload] + COMMON + off, tmp, shrink=False)
        self.stream, self._method = build(self.cfg)
        self.epochs = int(self.cfg.trainer.max_epochs)
        from cl.engine.loop import StreamRunner

        # built once, outside any timed span (~1 ms each, which the bare and hand sides' times included before e5822de)
        self._loaders = StreamRunner(self.cfg, self._method, self.stream, Path(tempfile.gettempdir()))

    def method(self) -> Any:
        return copy.deepcopy(self._method)

    def loader(self, method: Any, t: int) -> Any:
        """Experience t's training loader, exactly as the engine builds it (same sampler and seed)."""
        exp = self.stream.experiences[t]
        return self._loaders.train_loader(method.train_dataset(exp, self.stream), t)


Timing = tuple[float, float]  # wall and CPU seconds of one experience's training


def engine_side(setup: Setup, counter_off: bool = False) -> Iterator[Timing]:
    """The engine, one experience per ``next``: ``StreamRunner.run`` without its (untimed) initial checkpoint and
    evaluations; the timed span is the runner's own ``train_seconds``. Returns the trained method."""
    from lightning.fabric.utilities.seed import seed_everything

    from cl.engine.loop import StreamRunner

    with tempfile.TemporaryDirectory() as tmp:
        method = setup.method()
        cfg = setup.engine_off_cfg if counter_off else setup.engine_cfg
        runner = StreamRunner(cfg, method, setup.stream, Path(tmp))
        runner.evaluate = lambda: ([0.0] * len(setup.stream), [0.0] * len(setup.stream))  # evaluation excluded
        method.setup_stream(setup.stream)  # as StreamRunner._run
        for cb in runner.callbacks.values():
            if hasattr(cb, "setup_stream"):
                cb.setup_stream(setup.stream)
        seed_everything(int(cfg.seed), verbose=False)
        for t in range(len(setup.stream)):
            wall, cpu = runner.train_seconds, runner.train_cpu_seconds
            runner.run_experience(t)
            yield runner.train_seconds - wall, runner.train_cpu_seconds - cpu
        return method


def bare_side(setup: Setup) -> Iterator[Timing]:
    import lightning as L
    from lightning.fabric.utilities.seed import seed_everything

    from cl.engine.trainer import quiet_lightning_notices

    quiet_lightning_notices()
    method = setup.method()
    with tempfile.TemporaryDirectory() as tmp:
        for t, exp in enumerate(setup.stream.experiences):
            seed_everything(int(setup.cfg.seed) + t, verbose=False)
            method.on_experience_start(exp)
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer = L.Trainer(
                accelerator="cpu", devices=1, max_epochs=setup.epochs, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp,
            )  # fmt: skip
            trainer.fit(method, train_dataloaders=setup.loader(method, t))
            method.on_experience_end(exp, lambda d: None)
            yield time.perf_counter() - start, time.process_time() - cpu_start
    return method


def hand_side(setup: Setup) -> Iterator[Timing]:
    from lightning.fabric.utilities.seed import seed_everything

    method = setup.method()
    for t, exp in enumerate(setup.stream.experiences):
        seed_everything(int(setup.cfg.seed) + t, verbose=False)
        method.on_experience_start(exp)
        loader = setup.loader(method, t)
        start, cpu_start = time.perf_counter(), time.process_time()
        conf = method.configure_optimizers()
        opt, sched = (conf["optimizer"], conf["lr_scheduler"]["scheduler"]) if isinstance(conf, dict) else (conf, None)
        method.train()
        for epoch in range(setup.epochs):
            loader.sampler.set_epoch(epoch)  # a new shuffle every epoch, as Lightning does
            method.on_train_epoch_start()
            for i, batch in enumerate(loader):
                out = method.training_step(batch, i)
                loss = out["loss"] if isinstance(out, dict) else out
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if sched is not None:  # interval "epoch" (the prompt methods' cosine)
                sched.step()
        method.on_experience_end(exp, lambda d: None)
        yield time.perf_counter() - start, time.process_time() - cpu_start
    return method


SIDES: dict[str, Callable[[Setup], Iterator[Timing]]] = {
    "engine": engine_side,
    "bare": bare_side,
    "hand": hand_side,
    "engine_off": lambda s: engine_side(s, counter_off=True),
    "bare_again": bare_side,  # an A/A control: bare_again/bare shows what the bench reads between identical sides
}


def drain(side: Iterator[Timing]) -> tuple[list[Timing], Any]:
    """Run a side's remaining experiences: their timings and the trained method."""
    timings = []
    try:
        while True:
            timings.append(next(side))
    except StopIteration as stop:
        return timings, stop.value


def check_identical(methods: dict[str, Any]) -> None:
    """Every tensor of the sides' state dicts equal, bit for bit; raises naming the first that differs."""
    (ref_name, ref), *others = methods.items()
    ref_state = ref.state_dict()
    for name, method in others:
        for key, value in method.state_dict().items():
            if not torch.equal(value, ref_state[key]):
                diff = (value.double() - ref_state[key].double()).abs().max().item()
                raise SystemExit(f"{name} and {ref_name} differ at {key} (max |diff| {diff:.3g}): not one training")
