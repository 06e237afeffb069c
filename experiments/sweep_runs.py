"""Find and read the runs of a sweep directory written by ``python -m cl.run -m ...`` (one subfolder per run).

A run folder is any folder below the sweep (``.submitit`` and the aggregator's own output excluded) that holds
``metrics.json``, ``run_info.json``, ``failed.json`` or ``.hydra/config.yaml``. A run is *complete* when it did not
fail (no ``failed.json``), its ``metrics.json`` parses, says ``complete: true`` (when the key is present) and holds a
full square ``acc_matrix`` of fractions. Every other run is *incomplete* and carries the reason; the aggregator never
averages it.

A run's config is its resolved ``config.yaml`` (what produced its metrics), else Hydra's ``.hydra/config.yaml``.
Settings (:func:`setting_keys`) are every resolved key whose value differs between the complete runs, except the seed
and the keys that do not change an experiment (paths, devices, logger, progress bar: the keys a resume may change,
``cl/engine/resume_policy.py``); keys of the method's own config count among runs of the same method. A subtree that
only some runs have, the same wherever present (a callback added to some runs), is one setting: its ``_target_``; a
key equal to the run's seed wherever present (``buffer_seed: ${seed}``) is not a setting. A weights file
(``backbone.weights``) is compared by content: the same committed file read from two checkouts is one setting, and
different files show as ``sha256:<12 hex>``, never as a machine path.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SKIP_DIRS = {".submitit", ".hydra", ".hydra_resume", "checkpoints", "aggregate"}
RUN_MARKERS = ("metrics.json", "run_info.json", "failed.json", ".hydra/config.yaml")
# keys of the resolved config that always define a setting (a missing key reads as None)
DEFAULT_SETTING_KEYS = ("data.name", "scenario.name")
# sweep override keys that never define a setting
NON_SETTING_OVERRIDES = {"seed", "method", "resume", "experiment"}
# resolved keys that never define a setting (besides those a resume may change)
NON_SETTING_KEYS = ("seed", "resume", "hydra", "method._target_", "method.name")
MATRIX_SIZE_KEY = "T"  # pseudo-key: the number of experiences of the accuracy matrix, when it varies in a group
# resolved keys naming a file of weights: compared (and shown) by content, not by path
FILE_KEYS = ("backbone.weights",)


@dataclass
class Run:
    """One run folder: its config, overrides, metrics and, when incomplete, why."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # None = complete

    @property
    def complete(self) -> bool:
        return self.problem is None

    @property
    def method(self) -> str:
        name = self.metrics.get("method")
        if isinstance(name, str) and name:
            return name
        target = lookup(self.config, "method._target_")
        return str(target).rsplit(".", 1)[-1] if target else "unknown"

    @property
    def seed(self) -> Any:
        return self.metrics.get("seed", self.config.get("seed"))


def lookup(cfg: dict[str, Any], dotted: str) -> Any:
    """``cfg['a']['b']`` for ``'a.b'``; None when any level is missing."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every run folder below ``sweep_dir`` (not descending into a run folder), sorted."""
    found: list[Path] = []

    def visit(folder: Path) -> None:
        if any((folder / marker).exists() for marker in RUN_MARKERS):
            found.append(folder)
            return
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in SKIP_DIRS):
            visit(child)

    for child in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name not in SKIP_DIRS):
        visit(child)
    return found


def _read_overrides(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    out: dict[str, str] = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _matrix_problem(matrix: Any) -> str | None:
    if not isinstance(matrix, list) or not matrix or not all(isinstance(row, list) for row in matrix):
        return "acc_matrix missing or not a list of rows"
    n = len(matrix)
    if any(len(row) != n for row in matrix):
        return f"acc_matrix is {n} rows x {sorted({len(r) for r in matrix})} columns: not every experience trained"
    for row in matrix:
        for v in row:
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 1:
                return f"acc_matrix holds {v!r}, not a fraction in [0, 1]"
    return None


def _read_config(path: Path) -> dict[str, Any]:
    for candidate in (path / "config.yaml", path / ".hydra" / "config.yaml"):
        if candidate.exists():
            return yaml.safe_load(candidate.read_text()) or {}
    return {}


def load_run(path: Path) -> Run:
    """Read one run folder; never raises for a broken run (the problem is recorded instead)."""
    run = Run(path=path)
    try:
        run.config = _read_config(path)
        run.overrides = _read_overrides(path / ".hydra" / "overrides.yaml")
    except (OSError, yaml.YAMLError) as err:
        run.problem = f"unreadable config record: {err}"
        return run
    failed = path / "failed.json"
    if failed.exists():
        try:
            info = json.loads(failed.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        if not run.overrides and isinstance(info.get("overrides"), list):
            run.overrides = {str(o).partition("=")[0].lstrip("+~"): str(o).partition("=")[2] for o in info["overrides"]}
        run.problem = f"failed: {info.get('type', 'error')}: {info.get('error', '(failed.json unreadable)')}"
        return run
    metrics_path = path / "metrics.json"
    if not metrics_path.exists():
        run.problem = "no metrics.json (still running, failed or killed)"
        return run
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        run.problem = f"unreadable metrics.json: {err}"
        return run
    if not isinstance(metrics, dict):
        run.problem = "metrics.json is not an object"
        return run
    run.metrics = metrics
    if metrics.get("complete") is False:
        done = metrics.get("experiences_trained", "?")
        run.problem = f"metrics.json says complete: false ({done}/{metrics.get('num_experiences', '?')} experiences)"
        return run
    run.problem = _matrix_problem(metrics.get("acc_matrix"))
    return run


def load_sweep(sweep_dir: Path) -> list[Run]:
    return [load_run(p) for p in find_run_dirs(sweep_dir)]


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: _by_content(prefix, node)}


_DIGESTS: dict[str, str] = {}


def _by_content(key: str, value: Any) -> Any:
    """``sha256:<12 hex>`` of the file a :data:`FILE_KEYS` value names (when it exists), else the value itself."""
    if key not in FILE_KEYS or not isinstance(value, str) or not Path(value).is_file():
        return value
    if value not in _DIGESTS:
        digest = hashlib.sha256()
        with open(value, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[value] = f"sha256:{digest.hexdigest()[:12]}"
    return _DIGESTS[value]


def _never_a_setting(key: str) -> bool:
    from cl.engine.resume_policy import may_change

    return may_change(key) or any(key == k or key.startswith(k + ".") for k in NON_SETTING_KEYS)


def _config_keys(runs: list[Run]) -> set[str]:
    """Resolved keys whose value differs between runs (``method.*`` keys: between runs of the same method)."""
    flats = [(r.method, _flat(r.config)) for r in runs if r.config]
    keys = set()
    for key in {k for _, f in flats for k in f}:
        if _never_a_setting(key) or _follows_the_seed(key, [f for _, f in flats]):
            continue
        if key.startswith("method."):
            by_method: dict[str, set[str]] = {}
            for method, f in flats:
                by_method.setdefault(method, set()).add(repr(f.get(key, "<absent>")))
            if any(len(v) > 1 for v in by_method.values()):
                keys.add(key)
        elif len({repr(f.get(key, "<absent>")) for _, f in flats}) > 1:
            keys.add(key)
    return _collapse_optional_subtrees(keys, [f for _, f in flats])


def _follows_the_seed(key: str, flats: list[dict[str, Any]]) -> bool:
    """A key that equals the run's seed wherever present (``buffer_seed: ${seed}``, a callback's ``seed: ${seed}``)
    is the seed again, not a setting."""
    having = [f for f in flats if key in f]
    return bool(having) and all(f[key] == f.get("seed") and not isinstance(f[key], bool) for f in having)


def _collapse_optional_subtrees(keys: set[str], flats: list[dict[str, Any]]) -> set[str]:
    """A config subtree that some runs have and the others lack, the same wherever it is present (e.g.
    ``callbacks.fpf`` of ER + FPF beside plain ER), is one setting, named by its ``_target_`` key (else its first key),
    not one column per key inside it."""
    out = set(keys)
    parents = {k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)}
    for parent in sorted(parents, key=lambda p: (p.count("."), p)):
        inside = sorted(k for k in out if k.startswith(parent + "."))
        if len(inside) < 2:
            continue
        having = [f for f in flats if any(k.startswith(parent + ".") for k in f)]
        if len(having) == len(flats) or any(len({repr(f.get(k)) for f in having}) > 1 for k in inside):
            continue  # every run has it, or it differs where present: each key stays a setting
        name = f"{parent}._target_" if f"{parent}._target_" in inside else inside[0]
        out.difference_update(inside)
        out.add(name)
    return out


def setting_keys(runs: list[Run], extra: tuple[str, ...] = ()) -> list[str]:
    """The default setting keys, ``extra``, every resolved config key that differs between the complete runs (see the
    module docstring) and every swept override key whose value differs; ``T`` when runs of one group have accuracy
    matrices of different sizes (they are never averaged together)."""
    keys = list(DEFAULT_SETTING_KEYS) + [k for k in extra if k not in DEFAULT_SETTING_KEYS]
    swept: dict[str, set[str]] = {}
    for run in runs:
        for key, value in run.overrides.items():
            if key not in NON_SETTING_OVERRIDES and not key.startswith("hydra") and not _never_a_setting(key):
                swept.setdefault(key, set()).add(value)
    found = _config_keys([r for r in runs if r.complete])
    for key in sorted(swept):
        absent = any(key not in r.overrides for r in runs)
        if len(swept[key]) > 1 or absent:
            found.add(key)
    keys += [k for k in sorted(found) if k not in keys]
    groups: dict[tuple[str, ...], set[int]] = {}
    for run in runs:
        if run.complete:
            groups.setdefault((run.method, *setting_of(run, keys)), set()).add(len(run.metrics["acc_matrix"]))
    if any(len(sizes) > 1 for sizes in groups.values()):
        keys.append(MATRIX_SIZE_KEY)
    return keys


def setting_of(run: Run, keys: list[str]) -> tuple[str, ...]:
    """The run's value for each setting key: the resolved config's value, else the override's text."""
    values = []
    for key in keys:
        if key == MATRIX_SIZE_KEY:
            matrix = run.metrics.get("acc_matrix")
            values.append(str(len(matrix)) if isinstance(matrix, list) else "")
            continue
        value = _by_content(key, lookup(run.config, key))
        if value is None:
            value = run.overrides.get(key)
        values.append("" if value is None else value if isinstance(value, str) else json.dumps(value))
    return tuple(values)
