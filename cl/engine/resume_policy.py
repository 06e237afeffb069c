"""Which config keys may change when a run continues, and how a moved path reaches the saved config.

A resumed run (``resume=DIR key=value``, or the same command re-run into its own directory) continues the experiment
the checkpoint records. Keys that only say *where* and *how* it runs may change, and apply: paths, devices and the
process layout, the progress bar, the logger, time limits, data-loading workers (:data:`MAY_CHANGE`). Any other key
would change the experiment (method, lr, seed, stream, ...): it is refused, with the list of what differs.

The saved config is resolved, so a moved ``paths.data_dir`` would not reach ``data.source.data_dir`` by interpolation:
:func:`rebase_paths` rewrites every saved value that starts with an old path to start with the new one.
"""

from __future__ import annotations

import copy
from typing import Any

# dotted key prefixes (a key equal to one, or below it) that may change on resume
MAY_CHANGE = (
    "paths",
    "resume",
    "requeue_on_preempt",
    "logger",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.max_time",
    "data.num_workers",
)
# command-line keys that select a preset for the whole config: compared over every key
WHOLE_CONFIG = ("experiment", "local")
_MISSING = "<absent>"


def may_change(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in MAY_CHANGE)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for every leaf of nested dicts (lists are leaves)."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def differences(saved: dict[str, Any], given: dict[str, Any], under: str = "") -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, given value)}`` for the leaves under ``under`` ("" = everywhere) that differ."""
    a, b = flatten(saved), flatten(given)
    keys = sorted(k for k in set(a) | set(b) if not under or k == under or k.startswith(under + "."))
    return {k: (a.get(k, _MISSING), b.get(k, _MISSING)) for k in keys if a.get(k, _MISSING) != b.get(k, _MISSING)}


def override_key(override: str) -> str | None:
    """The config key an override names (``+a.b=1`` -> ``a.b``; ``hydra.*``, ``resume`` -> None; a preset -> "")."""
    key = override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
    if not key or key.startswith("hydra") or key == "resume":
        return None
    return "" if key in WHOLE_CONFIG else key


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    if value is _MISSING:
        node.pop(leaf, None)
    else:
        node[leaf] = copy.deepcopy(value)


def _describe(diffs: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r} in the run, {b!r} given" for k, (a, b) in diffs.items())


def rebase_paths(tree: dict[str, Any], moved: dict[str, str]) -> dict[str, Any]:
    """Replace the prefix ``old`` of every string leaf by ``new`` for each ``old -> new`` (longest first)."""
    out = copy.deepcopy(tree)
    order = sorted(((o, n) for o, n in moved.items() if o and o != n), key=lambda x: -len(x[0]))
    for key, value in flatten(out).items():
        if not isinstance(value, str):
            continue
        for old, new in order:
            if value == old or value.startswith(old.rstrip("/") + "/"):
                _set(out, key, new + value[len(old) :])
                break
    return out


def merge_for_resume(saved: dict[str, Any], given: dict[str, Any], overrides: list[str]) -> tuple[dict, list[str]]:
    """The saved config with the command-line ``overrides`` that may change applied (values from the composed
    config ``given``); raises ``ValueError`` listing the keys that would change the experiment. Returns the config
    and the applied keys."""
    diffs: dict[str, tuple[Any, Any]] = {}
    for ov in overrides:
        key = override_key(ov)
        if key is not None:
            diffs.update(differences(saved, given, key))
    refused = {k: v for k, v in diffs.items() if not may_change(k)}
    if refused:
        raise ValueError(
            "these keys would change the experiment being resumed, so they are refused: "
            + _describe(refused)
            + ". Keys that may change on resume: "
            + ", ".join(MAY_CHANGE)
            + ". Start a new run for another experiment"
        )
    out = copy.deepcopy(saved)
    moved = {}
    for key, (old, new) in diffs.items():
        if key.startswith("paths.") and isinstance(old, str) and isinstance(new, str) and key != "paths.output_dir":
            moved[old] = new
        _set(out, key, new)
    return rebase_paths(out, moved), sorted(diffs)


def refused_differences(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The differences between two whole configs that a resume may not apply (see :data:`MAY_CHANGE`)."""
    return {k: v for k, v in differences(saved, given).items() if not may_change(k)}


def describe(diffs: dict[str, tuple[Any, Any]]) -> str:
    return _describe(diffs)
