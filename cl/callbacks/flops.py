"""Training-cost accounting: FLOPs (forward + backward) and the number of parameters updated, as FPF/k-FPF
(Zhao et al., ICML 2023) compare methods on cost.

FLOPs are counted with the formulas of ``torch.utils.flop_counter`` (:class:`cl.analysis.flops.LightFlopCounter`;
matmuls, convolutions, attention, the CPU attention kernel included since e325dd3: the ops that dominate; element-wise
ops and norms count 0, as in the usual FLOP tables) over the Lightning ``fit`` of every experience: every training step
with its replay forward passes and backward pass, plus anything a method does inside ``fit`` (k-FPF's triggers). Work
done after ``fit`` by objects that expose ``extra_train_flops()`` (the FPF callback) is added. Not counted: evaluation,
and post-``fit`` method hooks without ``extra_train_flops`` (EWC's Fisher).

Two modes (``callbacks.flops.mode``), which give the same totals on every method of this repository (tests in
``tests/analysis/test_flops.py`` compare them on finetune, ER, DER++, k-FPF, EWC, LwF and CODA-Prompt runs):

* ``full``: one ``TorchDispatchMode`` over every op of the whole ``fit``. Exact by construction, but every op then
  goes through Python (a small CNN trains ~1.2x slower).
* ``cached`` (default): the same counter, but a training step (Lightning's ``run_training_batch``: the training
  step, backward and optimizer step) whose *fingerprint* was already counted in this ``fit`` is not traced again: its
  FLOPs are the counted ones. The fingerprint of a step is the sequence of its calls of the *watched* modules (module,
  grad mode, the shapes and ``requires_grad`` of its positional tensor arguments, its scalar arguments): every module
  whose own code ran a counted op in a traced step of this ``fit`` (a linear layer; a parameterless module doing a
  matmul; a teacher kept outside the LightningModule), and the LightningModule's parameter owners that no traced step
  has called yet (a submodule first called mid-fit); why the others (norms, embeddings) need no watch:
  :mod:`cl.callbacks.flop_steps`, which records them through each watched module's call slot (48 calls per step of
  the default experiment, where a global hook saw 192 module calls). A step is traced in full when the
  fingerprint expected for it is unknown: the first step of each batch shape in each ``fit``, and every step after an
  untraced step whose fingerprint turned out new (ER's first replay step: the replay batch changes the forward's
  input shape), until that fingerprint has been traced once; the untraced steps that had it then get its count.
  Everything in ``fit`` outside training steps (method and callback hooks such as k-FPF's triggers in
  ``on_train_batch_end``, epoch hooks) is traced in full as in ``full`` mode, except fetching batches from the data
  loader (no matmul FLOPs in data loading; tracing every collate op was the largest cost) and the optimizer's update
  (SGD/Adam/AdamW do no matmuls; an optimizer that does, e.g. Shampoo, needs ``mode=full``).

The rule is the counter's alone (a method declares nothing) and assumes what holds for every method here: within one
``fit`` (one experience), a step's FLOPs are determined by its calls of the watched modules and their input shapes (no
data-dependent shapes inside a module, e.g. MoE routing; no matmuls on data-dependent shapes outside modules; no module
outside the LightningModule called for the first time in an untraced step). Where two traced steps with one fingerprint
count different FLOPs, the assumption is seen to fail: the counter warns and traces every later step of that ``fit``
(``tests/analysis/test_flops_fingerprint.py``: one test per kind of watched module, and this check). Counts are not
carried from one experience's ``fit`` to the next: an experience may change the work inside a module call without
changing its inputs' shapes (the prompt methods' growing prompt components), so each kind of step is traced once per
experience (~10-20 us per op through Python: a traced step of the default experiment runs ~1100 ops, ~15 ms more than
its ~40 ms; 2 of its 210 steps are traced, the first of each experience). A step whose fingerprint was never traced by
the end of ``fit`` is reported in ``flops_untraced_steps`` (0 in every test). Steps are found through the trainer's
profiler actions (``run_training_batch``, ``*.train_dataloader_next``); if a Lightning version renamed them, ``cached``
silently degrades to ``full`` (same totals, slower). Cost on the default experiment (~1 % of a run, by parts):
experiments/bench/README.md, section "Engine overhead".

Metrics (``metrics.json``): ``flops`` (total training FLOPs of the run so far), ``flops_fit`` (inside ``fit``),
``params_updated`` (the largest number of parameters the Lightning optimizer updated at one step), and
``param_updates`` (sum over optimizer steps of the parameters updated). Under DDP each rank counts its own work and
the totals are multiplied by the world size (ranks do equal work by construction of the distributed sampler).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from cl.callbacks.flop_steps import StepCache, structure

MODES = ("cached", "full")
STEP_ACTION = "run_training_batch"
FETCH_SUFFIX = "train_dataloader_next"


class FlopCounter(Callback):
    """Counts training FLOPs across the whole run (see the module docstring)."""

    def __init__(self, enabled: bool = True, mode: str = "cached") -> None:
        if mode not in MODES:
            raise ValueError(f"callbacks.flops.mode={mode!r}; allowed: {list(MODES)}")
        self.enabled, self.mode = enabled, mode
        self.flops_fit = 0
        self.params_updated = 0
        self.param_updates = 0
        self.untraced_steps = 0
        self.traced_steps = 0  # steps traced with the dispatch mode in cached mode (not checkpointed; diagnostics)
        self._base: Any = None  # the dispatch mode over fit outside cached steps and data fetching
        self._base_on = False  # whether it is entered now
        self._step: Any = None  # the dispatch mode over one traced step
        self._extra_sources: list[Any] = []
        self._profiler: Any = None
        self._auto_opt = True
        self._cache: StepCache | None = None
        self._world = 1
        self._batch_key: Any = None

    # ------------------------------------------------------------------------------------------- dispatch modes
    def _enter(self, on_count: Any = None) -> Any:
        from cl.analysis.flops import LightFlopCounter

        mode = LightFlopCounter(on_count)
        mode.__enter__()
        return mode

    @staticmethod
    def _exit(mode: Any) -> int:
        mode.__exit__(None, None, None)
        return int(mode.total)

    def _add(self, flops: int) -> None:
        self.flops_fit += flops * self._world

    def _pause_base(self) -> None:
        base = self._base
        if base is not None and self._base_on:  # one mode object per fit, entered and left around each step
            self._base_on = False
            base.__exit__(None, None, None)
            if base.total:
                self._add(base.total)
                base.total = 0

    def _resume_base(self) -> None:
        if not self._base_on:
            if self._base is None:
                from cl.analysis.flops import LightFlopCounter

                self._base = LightFlopCounter()
            self._base.__enter__()
            self._base_on = True

    # ------------------------------------------------------------------------------------------- lightning hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.enabled:
            return
        self._world = _world_size()
        self._auto_opt = bool(pl_module.automatic_optimization)
        if self.mode == "cached":
            self._cache = StepCache(pl_module)  # counts of this fit only (see the module docstring)
            self._batch_key = None
            self._patch_profiler(trainer.profiler)
        self._resume_base()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._profiler is not None:
            self._batch_key = structure(batch)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        n = sum(p.numel() for g in optimizer.param_groups for p in g["params"] if p.grad is not None)
        self.params_updated = max(self.params_updated, n)
        self.param_updates += n * self._world
        if self._step is not None and self._auto_opt:  # the optimizer's update follows: no matmul FLOPs
            step, self._step = self._step, None
            self._cache.step_flops += self._exit(step)

    def _stop(self) -> None:
        self._unpatch_profiler()
        cache = getattr(self, "_cache", None)
        if cache is not None and cache.open:  # an exception inside a step: count what ran
            self._close_step(resume=False)
        self._pause_base()
        self._base = None
        if cache is not None:
            untraced = sum(cache.pending.values())
            if untraced:
                rank_zero_warn(
                    f"FlopCounter: {untraced} training steps whose fingerprint was never traced are not counted"
                )
            self.untraced_steps += untraced
            cache.close()
            self._cache = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._stop()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop()

    # ------------------------------------------------------------------------------------------- step windows
    def _patch_profiler(self, profiler: Any) -> None:
        start, stop = profiler.start, profiler.stop
        self._saved = {k: profiler.__dict__[k] for k in ("start", "stop") if k in profiler.__dict__}

        def _start(action_name: str) -> None:
            start(action_name)
            if action_name == STEP_ACTION:
                self._open_step()
            elif action_name.endswith(FETCH_SUFFIX) and not self._cache.open:
                self._pause_base()

        def _stop(action_name: str) -> None:
            if action_name == STEP_ACTION:
                self._close_step()
            elif action_name.endswith(FETCH_SUFFIX) and not self._cache.open:
                self._resume_base()
            stop(action_name)

        profiler.start, profiler.stop = _start, _stop
        self._profiler = profiler

    def _unpatch_profiler(self) -> None:
        if self._profiler is not None:
            for k in ("start", "stop"):
                if k in self._saved:
                    setattr(self._profiler, k, self._saved[k])
                else:
                    delattr(self._profiler, k)
            self._profiler = None

    def _open_step(self) -> None:
        self._pause_base()
        if self._cache.open_window(self._batch_key):
            self._step = self._enter(self._cache.counted)
            self.traced_steps += 1

    def _close_step(self, resume: bool = True) -> None:
        if self._step is not None:
            step, self._step = self._step, None
            self._cache.step_flops += self._exit(step)
        self._add(self._cache.close_window())
        if resume:
            self._resume_base()

    # ------------------------------------------------------------------------------------------- engine hooks
    def on_experience_end(self, runner: Any, experience: Any) -> None:
        sources = [runner.method, *runner.callbacks.values()]
        self._extra_sources = [s for s in sources if s is not self and hasattr(s, "extra_train_flops")]

    def report_metrics(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        extra = sum(int(s.extra_train_flops()) for s in self._extra_sources)
        return {
            "flops": self.flops_fit + extra,
            "flops_fit": self.flops_fit,
            "flops_untraced_steps": self.untraced_steps,
            "params_updated": self.params_updated,
            "param_updates": self.param_updates,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "flops_fit": self.flops_fit,
            "params_updated": self.params_updated,
            "param_updates": self.param_updates,
            "untraced_steps": self.untraced_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.flops_fit = int(state_dict["flops_fit"])
        self.params_updated = int(state_dict["params_updated"])
        self.param_updates = int(state_dict["param_updates"])
        self.untraced_steps = int(state_dict.get("untraced_steps", 0))


def _world_size() -> int:
    import torch

    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
