"""Leave-classes-out calibration of an unlearning method's strength (``unlearn_method.alpha=auto``, ``lr=auto``).

The strength of SSD (alpha, lambda) or IAU (the step eta) is chosen on the same checkpoint by forgetting *other*
classes, never the one being forgotten: ``auto.classes`` calibration classes are drawn (seeded by ``auto.seed``) from
the seen classes minus the forget classes; for each, the method's expensive part (importances, gradients) is computed
once (:meth:`Calibratable.prepare`) and every grid point is a cheap change of a copy of the model
(:meth:`Calibratable.apply`), scored on the test split:

* ``forget``: accuracy on the calibration class's test samples after the change;
* ``retain_drop``: the drop of accuracy on the test samples of every other class, the calibration class *and the
  classes being forgotten* left out (the forgotten classes' data are never looked at).

Criterion (``auto.forget_max``, ``auto.retain_drop_max``): among the grid points whose mean forget accuracy is at most
``forget_max`` and mean retain drop at most ``retain_drop_max``, the one with the smallest retain drop (ties: the
first in grid order: list the gentlest first); if none qualifies, the one with the smallest ``forget + retain_drop``.
The whole table, the classes and the choice go into the report (``method_info.auto``). The calibration classes are the
first ``classes`` of one seeded permutation of the seen classes that are not forgotten, so runs forgetting different
classes share most of them, and their importances are cached with the method's own cache.

Reuse across forgotten classes: every grid model is scored once on the whole test split as per-class correct / total
counts, from which the forget accuracy (class ``c``) and the retain drop (any set of left-out classes) follow exactly.
Methods that return a :meth:`Calibratable.calibration_key` get these counts cached on disk next to the importances
(``unlearn_cache/calibration-*.json``, keyed by the checkpoint's SHA-256, the method's key and the calibration class),
so a second forgotten class with the same calibration classes re-scores nothing; ``cached_classes`` in the report
says which classes came from the cache.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

from unlearn.context import UnlearnConfigError


@dataclass
class AutoConfig:
    """``unlearn_method.auto``: see the module docstring."""

    classes: int = 3
    grid: list[float] = field(default_factory=lambda: [100.0, 50.0, 20.0, 10.0, 7.0, 5.0, 3.0, 2.0, 1.0])
    grid_relative: list[float] = field(default_factory=lambda: [0.9, 0.8, 0.6, 0.4, 0.2])
    lambdas: list[float] = field(default_factory=lambda: [1.0])
    forget_max: float = 0.05
    retain_drop_max: float = 0.03
    seed: int = 0

    @classmethod
    def from_config(cls, node: Any, key: str) -> AutoConfig:
        from omegaconf import DictConfig, OmegaConf

        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise UnlearnConfigError(f"{key}: unknown keys {unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        out = cls(**raw)
        out.grid, out.lambdas = [float(v) for v in out.grid], [float(v) for v in out.lambdas]
        out.grid_relative = [float(v) for v in out.grid_relative]
        lists = (out.grid, out.grid_relative, out.lambdas)
        if out.classes < 1 or not all(lists) or min(min(v) for v in lists) <= 0:
            raise UnlearnConfigError(
                f"{key}: classes={out.classes}, grid={out.grid}, grid_relative={out.grid_relative}, "
                f"lambdas={out.lambdas}; allowed: classes >= 1 and non-empty lists of positive numbers"
            )
        return out


class Calibratable:
    """What a method implements to be calibrated: ``prepare`` a forget task once, ``apply`` a grid point to a copy."""

    def grid(self, auto: AutoConfig) -> list[float]:
        return auto.grid

    def prepare(self, model: Any, task: Any) -> Any:
        raise NotImplementedError

    def apply(self, model: Any, state: Any, task: Any, value: float, lam: float) -> None:
        raise NotImplementedError

    def calibration_key(self, task: Any) -> dict[str, Any] | None:
        """Everything besides the checkpoint, the calibration class and the grid point that determines a grid model
        (its importances' settings); ``None``: the calibration rows are not cached."""
        return None


def calibration_classes(seen: list[int], forgotten: list[int], k: int, seed: int) -> list[int]:
    """The first ``k`` classes of a seeded permutation of ``seen`` that are not ``forgotten``."""
    order = list(seen)
    random.Random(seed).shuffle(order)
    out = [c for c in order if c not in set(forgotten)][:k]
    if not out:
        raise UnlearnConfigError(f"alpha=auto: no class left to calibrate on (seen {seen}, forgotten {forgotten})")
    return sorted(out)


def class_task(task: Any, c: int) -> Any:
    """``task`` with class ``c`` as the forget set (same checkpoint, views and loader settings)."""
    from dataclasses import replace

    from unlearn.forget import ClassForget, SeenData, make_split

    seen = SeenData(task.ctx.stream, task.ctx.experience)
    split = make_split(ClassForget([c]), seen)
    full = task.full
    return replace(
        task,
        split=split,
        forget=full.subset(split.forget_train),
        retain=full.subset(split.retain_train),
        forget_type="class",
        info={},
    )


Counts = dict[int, list[int]]  # class -> [correct, total] on the test split


def _class_counts(model: Any, pool: Any, task: Any) -> Counts:
    from unlearn.evaluate import class_masks, forward_pool

    out = forward_pool(model, pool, class_masks(model, task.ctx.stream), task.device, 256, False)
    counts: Counts = {}
    for y, ok in zip(out["y"].tolist(), (out["pred"] == out["y"]).tolist(), strict=True):
        counts.setdefault(int(y), [0, 0])
        counts[int(y)][0] += int(ok)
        counts[int(y)][1] += 1
    return counts


def _accuracy(counts: Counts, classes: set[int]) -> float:
    correct = sum(counts.get(c, [0, 0])[0] for c in classes)
    total = sum(counts.get(c, [0, 0])[1] for c in classes)
    return correct / total if total else float("nan")


class RowCache:
    """Per-class test counts of the grid models of one calibration class, on disk (module docstring)."""

    def __init__(self, method: Calibratable, task: Any, c: int) -> None:
        import hashlib
        import json

        from unlearn.importance import cache_root

        key = method.calibration_key(task)
        self.path = None
        self.rows: dict[str, Counts] = {}
        if key is None:
            return
        self.key = {**key, "checkpoint": task.ctx.checkpoint_hash, "class": int(c)}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        self.path = cache_root(task.ctx.run_dir, task.work_dir) / "unlearn_cache" / f"calibration-{digest}.json"
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("key") == self.key:
                    self.rows = {k: {int(y): v for y, v in r.items()} for k, r in data["rows"].items()}
            except (ValueError, KeyError, AttributeError):  # a damaged entry is recomputed
                self.rows = {}

    @staticmethod
    def name(value: float, lam: float) -> str:
        return f"{value!r}|{lam!r}"

    def save(self) -> None:
        import json

        from cl.engine.distributed import is_global_zero
        from cl.utils.atomic import write_text

        if self.path is not None and is_global_zero():
            write_text(self.path, json.dumps({"key": self.key, "rows": self.rows}))


def choose(table: list[dict[str, Any]], auto: AutoConfig) -> tuple[dict[str, Any], bool]:
    """The criterion of the module docstring on rows ``{"forget", "retain_drop", ...}`` in grid order; returns the
    chosen row and whether it met the thresholds."""
    ok = [t for t in table if t["forget"] <= auto.forget_max and t["retain_drop"] <= auto.retain_drop_max]
    if ok:
        return min(ok, key=lambda t: t["retain_drop"]), True
    return min(table, key=lambda t: t["forget"] + t["retain_drop"]), False


def calibrate(
    method: Calibratable, model: Any, task: Any, auto: AutoConfig, classes: list[int] | None = None
) -> tuple[float, float, dict[str, Any]]:
    """Choose ``(value, lambda)`` on held-out classes (module docstring; ``classes`` replaces the seeded draw);
    returns them and the report entry."""
    from unlearn.data import PoolDataset
    from unlearn.forget import SeenData

    seen = SeenData(task.ctx.stream, task.ctx.experience)
    forgotten = list(task.split.forget_classes)
    if not forgotten and classes is None:
        raise UnlearnConfigError("alpha=auto / lr=auto calibrates on held-out classes: it needs a class forget set")
    if classes is None:
        classes = calibration_classes(seen.classes, forgotten, auto.classes, auto.seed)
    elif set(classes) & set(forgotten):
        raise UnlearnConfigError(f"calibration classes {classes} include forgotten classes {forgotten}")
    leave_out = set(forgotten)
    rows: dict[tuple[float, float], list[tuple[float, float]]] = {}
    cached_classes = []
    was = model.training
    model.eval()
    test = PoolDataset(task.ctx.stream, seen.test_keys, "test")
    base_counts = _class_counts(model, test, task)
    for c in classes:
        sub = class_task(task, c)
        keep = {y for y in base_counts if y != c and y not in leave_out}
        base = _accuracy(base_counts, keep)
        cache = RowCache(method, sub, c)
        points = [(value, lam) for value in method.grid(auto) for lam in auto.lambdas]
        missing = [pt for pt in points if cache.name(*pt) not in cache.rows]
        if missing:
            state = method.prepare(model, sub)
            for value, lam in missing:
                m = copy.deepcopy(model)
                method.apply(m, state, sub, value, lam)
                cache.rows[cache.name(value, lam)] = _class_counts(m, test, task)
            cache.save()
        else:
            cached_classes.append(c)
        for value, lam in points:
            counts = cache.rows[cache.name(value, lam)]
            rows.setdefault((value, lam), []).append((_accuracy(counts, {c}), base - _accuracy(counts, keep)))
    model.train(was)
    table = [
        {
            "value": v,
            "lambda": lam,
            "forget": sum(f for f, _ in r) / len(r),
            "retain_drop": sum(d for _, d in r) / len(r),
            "per_class": [{"forget": f, "retain_drop": d} for f, d in r],
        }
        for (v, lam), r in rows.items()
    ]
    best, ok = choose(table, auto)
    entry = {
        "classes": classes,
        "criterion": {"forget_max": auto.forget_max, "retain_drop_max": auto.retain_drop_max},
        "met_criterion": ok,
        "cached_classes": cached_classes,
        "chosen": {"value": best["value"], "lambda": best["lambda"]},
        "table": table,
    }
    return best["value"], best["lambda"], entry
