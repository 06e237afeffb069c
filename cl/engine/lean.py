"""A lean single-process training loop with the part of Lightning's ``Trainer`` interface the engine uses.

Why: on the engine benchmark (``experiments/bench/stream_overhead.py``: small CNN, digits, 5 experiences x 2 epochs,
batch 32, ~90 steps of ~10 ms) Lightning's ``Trainer.fit`` costs ~0.7 ms per training step (hook dispatch with
profiler strings, the closure of automatic optimization, the logger connector, progress tracking) and ~9 ms per
``fit`` (strategy, connectors, signal handlers): 1.10-1.15x a hand-written loop, above the goal of 1.05x. This loop
runs the same math in the same order as Lightning's automatic optimization (``training_step``; ``zero_grad`` with
``set_to_none``; ``backward``; ``on_before_optimizer_step``; gradient clipping by norm; ``optimizer.step()``;
``step``-interval schedulers after the step, ``epoch``-interval ones at the epoch's last batch) and calls the same
hooks in the same order (callbacks first, then the LightningModule) with the hooks dispatched only to the objects that
override them. It gives the same weights as Lightning's loop (tests/engine/test_lean.py).

Scope (anything else fails before training, naming the key): one process on one device (``trainer.devices=1``; DDP
stays on Lightning's Trainer, ``trainer=ddp``/``ddp_cpu``), precision ``32-true`` or ``bf16-mixed`` (autocast),
automatic optimization with one optimizer, no ``self.log`` in the LightningModule (the engine logs ``train/loss`` and
the method's extra step outputs from the step's output: :class:`cl.engine.trainer.StepLossLogger`). A SIGTERM during
``fit`` sets ``received_sigterm`` (and calls the handler installed before ``fit``, the engine's ``SigtermLatch``); the
loop raises Lightning's ``SIGTERMException`` at the end of the step, as Lightning's loop does.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core import LightningModule
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cl.engine.lean_progress import LeanProgressBar

PRECISIONS = ("32-true", "32", "bf16-mixed")
HOOKS = (
    "setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_start", "on_before_zero_grad",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_train_batch_end",
    "on_train_epoch_end", "on_train_end", "on_fit_end", "teardown",
)  # fmt: skip
# a LightningModule overriding one of these needs Lightning's own loop
UNSUPPORTED = ("optimizer_step", "optimizer_zero_grad", "training_step_end", "configure_callbacks")


class LeanTrainer:
    """``fit(module, train_dataloaders=loader)`` for one experience; see the module docstring."""

    def __init__(
        self,
        accelerator: str = "cpu",
        devices: int | str = 1,
        max_epochs: int = 1,
        precision: str | int = "32-true",
        log_every_n_steps: int = 50,
        enable_progress_bar: bool = True,
        limit_train_batches: int | float | None = None,
        gradient_clip_val: float | None = None,
        deterministic: bool = False,
        strategy: Any = "auto",
        num_nodes: int = 1,
        logger: Any = None,
        callbacks: list[Any] | None = None,
        default_root_dir: str | None = None,
        progress_label: str = "",
        **lightning_only: Any,
    ) -> None:
        _check(devices in (1, "1", "auto"), "devices", devices, "1 (use trainer=ddp_cpu / ddp for several)")
        _check(int(num_nodes) == 1, "num_nodes", num_nodes, "1")
        _check(strategy in (None, "auto", "single_device"), "strategy", strategy, "'auto' (DDP: trainer=ddp_cpu/ddp)")
        _check(str(precision) in PRECISIONS, "precision", precision, list(PRECISIONS))
        _check(accelerator in ("cpu", "gpu", "cuda", "auto"), "accelerator", accelerator, ["cpu", "gpu", "auto"])
        ignored = {"enable_checkpointing", "enable_model_summary", "num_sanity_val_steps", "use_distributed_sampler"}
        for key in set(lightning_only) - ignored:
            _check(False, key, lightning_only[key], f"a key of the lean loop, or trainer={_LIGHTNING_HINT}")
        use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        self.root_device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        self.max_epochs = int(max_epochs)
        self.precision = str(precision)
        self.log_every_n_steps = int(log_every_n_steps)
        self.limit_train_batches = 1.0 if limit_train_batches is None else limit_train_batches
        self.gradient_clip_val = gradient_clip_val
        self.deterministic = bool(deterministic)
        self.loggers = [] if logger in (None, False) else list(logger if isinstance(logger, list) else [logger])
        self.logger = self.loggers[0] if self.loggers else None
        self.callbacks = list(callbacks or [])
        if enable_progress_bar:
            self.callbacks.append(LeanProgressBar(progress_label))
        self.default_root_dir = default_root_dir
        self.profiler = PassThroughProfiler()  # the FLOP counter brackets steps and fetches through its start/stop
        self.strategy = None  # one process: cl.engine.distributed.world_size_of(trainer) == 1
        self.world_size, self.global_rank, self.is_global_zero = 1, 0, True
        self.global_step = self.current_epoch = 0
        self.num_training_batches = 0
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[dict[str, Any]] = []
        self.received_sigterm = False
        self.hook_owners: dict[str, list[Any]] = {}  # hook name -> the objects whose override this fit calls, in order
        self.training, self.sanity_checking = True, False
        self.lightning_module: LightningModule | None = None
        self.train_dataloader: Any = None

    # ------------------------------------------------------------------------------------------- setup
    def _hooks(self, module: LightningModule) -> dict[str, list[Any]]:
        """For each hook, the bound methods to call: callbacks' then the module's, only where overridden."""
        out = {}
        for name in HOOKS:
            owners = [cb for cb in self.callbacks if getattr(type(cb), name, None) is not getattr(Callback, name)]
            fns = [(lambda f: lambda *a: f(self, module, *a))(getattr(cb, name)) for cb in owners]
            if getattr(type(module), name, None) is not getattr(LightningModule, name, None):
                owners.append(module)
                fns.append(getattr(module, name))
            out[name] = fns
            self.hook_owners[name] = owners
        return out

    def _configure_optimizers(self, module: LightningModule) -> None:
        conf = module.configure_optimizers()
        sched: Any = None
        if isinstance(conf, dict):
            opt, sched = conf["optimizer"], conf.get("lr_scheduler")
        else:
            opt = conf
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"the lean loop needs configure_optimizers to return one optimizer (or a dict); got {conf}")
        self.optimizers = [opt]
        if sched is not None:
            sched = dict(sched) if isinstance(sched, dict) else {"scheduler": sched}
            sched.setdefault("interval", "epoch")
            if sched["interval"] not in ("epoch", "step"):
                raise ValueError(f"lr_scheduler interval={sched['interval']!r}; allowed: ['epoch', 'step']")
            self.lr_scheduler_configs = [sched]

    def _num_batches(self, loader: Any) -> int:
        n, limit = len(loader), self.limit_train_batches
        if isinstance(limit, int) and not isinstance(limit, bool):
            return min(n, limit)
        return n if float(limit) == 1.0 else int(n * float(limit))

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, model: LightningModule, train_dataloaders: Any) -> None:
        for name in UNSUPPORTED:
            if getattr(type(model), name, None) is not getattr(LightningModule, name, None):
                raise ValueError(f"{type(model).__name__} overrides {name}; run it with trainer={_LIGHTNING_HINT}")
        if not model.automatic_optimization:
            raise ValueError(f"{type(model).__name__} uses manual optimization; run it with trainer={_LIGHTNING_HINT}")
        if self.deterministic:
            torch.use_deterministic_algorithms(True)
        self.lightning_module, self.train_dataloader = model, train_dataloaders
        model.trainer = self  # LightningModule.trainer / global_step / current_epoch read this object
        if any(t.device != self.root_device for t in (*model.parameters(), *model.buffers())):
            model.to(self.root_device)
        hooks = self._hooks(model)
        handler = self._install_sigterm()
        try:
            self._log_hyperparams(model)
            for fn in hooks["setup"]:
                fn("fit")
            self._configure_optimizers(model)
            self.num_training_batches = self._num_batches(train_dataloaders)
            self._call(hooks["on_fit_start"])
            model.train()
            self._call(hooks["on_train_start"])
            for epoch in range(self.max_epochs):
                self.current_epoch = epoch
                self._run_epoch(model, hooks)
            self._call(hooks["on_train_end"])
            self._call(hooks["on_fit_end"])
        except BaseException as err:
            for cb in self.callbacks:
                cb.on_exception(self, model, err)
            for logger in self.loggers:
                logger.finalize("failed")
            raise
        finally:
            self._restore_sigterm(handler)
        for logger in self.loggers:
            logger.finalize("success")
        for fn in hooks["teardown"]:
            fn("fit")

    @staticmethod
    def _call(fns: list[Any], *args: Any) -> None:
        for fn in fns:
            fn(*args)

    def _run_epoch(self, model: LightningModule, hooks: dict[str, list[Any]]) -> None:
        call, profiler, opt = self._call, self.profiler, self.optimizers[0]
        epoch_scheds = [s["scheduler"] for s in self.lr_scheduler_configs if s["interval"] == "epoch"]
        step_scheds = [s["scheduler"] for s in self.lr_scheduler_configs if s["interval"] == "step"]
        autocast = self.precision == "bf16-mixed"
        loader = self.train_dataloader
        for sampler in (
            getattr(loader, "sampler", None),
            getattr(getattr(loader, "batch_sampler", None), "sampler", None),
        ):
            if hasattr(sampler, "set_epoch"):  # as Lightning does: a new permutation per epoch
                sampler.set_epoch(self.current_epoch)
        call(hooks["on_train_epoch_start"])
        it = iter(loader)
        profiler.start(BATCHES_ACTION)  # the FLOP counter need not watch between steps when batch hooks are flop-free
        try:
            self._run_batches(model, hooks, it, opt, step_scheds, epoch_scheds, autocast)
        finally:
            profiler.stop(BATCHES_ACTION)
        call(hooks["on_train_epoch_end"])

    def _run_batches(
        self, model: LightningModule, hooks: dict[str, list[Any]], it: Any, opt: torch.optim.Optimizer,
        step_scheds: list[Any], epoch_scheds: list[Any], autocast: bool,
    ) -> None:  # fmt: skip
        call, profiler = self._call, self.profiler
        n, to_device = self.num_training_batches, self.root_device.type != "cpu"
        batch_start, batch_end = hooks["on_train_batch_start"], hooks["on_train_batch_end"]
        before_zero_grad, before_backward = hooks["on_before_zero_grad"], hooks["on_before_backward"]
        after_backward, before_step = hooks["on_after_backward"], hooks["on_before_optimizer_step"]
        for batch_idx in range(n):
            profiler.start(FETCH_ACTION)
            batch = next(it)
            profiler.stop(FETCH_ACTION)
            if to_device:
                batch = model.transfer_batch_to_device(batch, self.root_device, 0)
            if batch_start and any(fn(batch, batch_idx) == -1 for fn in batch_start):
                break
            profiler.start(STEP_ACTION)
            if autocast:
                with torch.autocast(self.root_device.type, dtype=torch.bfloat16):
                    output = model.training_step(batch, batch_idx)
            else:
                output = model.training_step(batch, batch_idx)
            loss = output.get("loss") if isinstance(output, dict) else output
            if loss is not None:
                call(before_zero_grad, opt)
                opt.zero_grad(set_to_none=True)
                call(before_backward, loss)
                model.backward(loss)
                call(after_backward)
                call(before_step, opt)
                if self.gradient_clip_val:
                    params = [p for g in opt.param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, float(self.gradient_clip_val))
                opt.step()
                self.global_step += 1
            profiler.stop(STEP_ACTION)
            for sched in step_scheds:
                sched.step()
            if batch_idx == n - 1:
                for sched in epoch_scheds:
                    sched.step()
            if batch_end:
                call(batch_end, _detached(output, loss), batch, batch_idx)
            if self.received_sigterm:
                raise SIGTERMException()

    # ------------------------------------------------------------------------------------------- loggers, signals
    def _log_hyperparams(self, model: LightningModule) -> None:
        for logger in self.loggers:  # as Lightning's Trainer does at the start of fit
            if model.hparams_initial:
                logger.log_hyperparams(model.hparams_initial)
            logger.log_graph(model)
            logger.save()

    def _install_sigterm(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None
        before = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            self.received_sigterm = True
            if callable(before):
                before(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        return before

    @staticmethod
    def _restore_sigterm(before: Any) -> None:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def check_config(trainer_cfg: Any) -> None:
    """Refuse, before training, the settings the lean loop cannot run (``ValueError`` naming the key)."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) else trainer_cfg
    settings = {k: v for k, v in dict(settings).items() if k != "_target_"}
    LeanTrainer(**{**settings, "enable_progress_bar": False})


BATCHES_ACTION = "[LeanTrainer].train_batches"
FETCH_ACTION = "[LeanTrainer].train_dataloader_next"
STEP_ACTION = "run_training_batch"  # Lightning's name: the FLOP counter brackets training steps by it
_LIGHTNING_HINT = "lightning (Lightning's Trainer, conf/trainer/lightning.yaml)"


def _detached(output: Any, loss: torch.Tensor | None) -> Any:
    """The step output as Lightning hands it to ``on_train_batch_end``: ``{"loss": ..., **extras}``, detached."""
    if isinstance(output, dict):
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in output.items()}
    return None if loss is None else {"loss": loss.detach()}


def _check(ok: bool, key: str, value: Any, allowed: Any) -> None:
    if not ok:
        raise ValueError(f"trainer.{key}={value!r} is not supported by the lean loop; allowed: {allowed}")
