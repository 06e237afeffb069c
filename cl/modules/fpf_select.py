"""Module units and module selection for FPF / k-FPF (Zhao et al., "Does Continual Learning Equally Forget All
Parameters?", ICML 2023).

A *unit* is what the sensitivity analysis scores and FPF fine-tunes: a module that owns parameters directly and has no
child modules (a convolution, a norm layer, a linear layer), named by its module path (``backbone.model.conv1``,
``head``). Parameters owned directly by a container module (a ViT's ``cls_token`` and ``pos_embed``) are one unit
each, named by their parameter path. Only parameters the method trains (``trainable_parameters()``) form units, so
frozen copies (LwF's old model) are never selected.

Selection (``modules`` config key):

* a list of patterns, each an ``fnmatch`` pattern on unit names (``backbone.model.layer1.*``) or ``type:<pattern>`` on
  the unit's module class name (``type:BatchNorm*``); a pattern that matches nothing is an error;
* ``default``: :data:`DEFAULT_CNN` for CNNs (all batch-norm layers, the first convolution, the classifier: the
  paper's finding as commonly cited) and :data:`DEFAULT_VIT` for ViTs (what our sensitivity analysis ranks highest on
  the default digits stream: see the module docstring of :mod:`cl.analysis.sensitivity`);
* ``auto``: the ``top`` units by measured sensitivity (see :mod:`cl.analysis.sensitivity`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

DEFAULT_CNN: tuple[str, ...] = ("type:BatchNorm*", "backbone.model.conv1", "head")
# The three top units of `python -m cl.run experiment=er_digits` (vit_tiny, seed 0; run_dir/sensitivity.csv, spec
# normalisation): the class token, the positional embedding and the classifier (S = 3.1e-3, 1.8e-4, 1.5e-5; next come
# the attention output projections of blocks 3, 2, 0 at ~1e-5, patch embedding 20th, final norm 22nd of 30). Only the
# depth-independent units are kept as the default; `modules=auto` picks by measurement on the run itself.
DEFAULT_VIT: tuple[str, ...] = ("*cls_token", "*pos_embed", "head")
SELECTION_MODES = ("default", "auto", "<list of patterns>")


@dataclass(frozen=True)
class Unit:
    """One selectable module: its name, module class and ``(parameter name, parameter)`` pairs."""

    name: str
    kind: str
    params: tuple[tuple[str, nn.Parameter], ...]

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


def module_units(model: nn.Module, trainable: Iterable[nn.Parameter] | None = None) -> dict[str, Unit]:
    """The units of ``model`` (see the module docstring), in module order; ``trainable`` restricts the parameters."""
    allowed = None if trainable is None else {id(p) for p in trainable}
    units: dict[str, Unit] = {}
    for mname, mod in model.named_modules():
        direct = [(n, p) for n, p in mod.named_parameters(recurse=False) if allowed is None or id(p) in allowed]
        if not direct:
            continue
        full = [(f"{mname}.{n}" if mname else n, p) for n, p in direct]
        if any(True for _ in mod.children()):
            for name, p in full:
                units[name] = Unit(name, type(mod).__name__, ((name, p),))
        else:
            units[mname] = Unit(mname, type(mod).__name__, tuple(full))
    return units


def method_units(method: nn.Module) -> dict[str, Unit]:
    """Units of a continual method restricted to the parameters it trains."""
    trainable = method.trainable_parameters() if hasattr(method, "trainable_parameters") else None
    return module_units(method, trainable)


def match_units(units: dict[str, Unit], patterns: Sequence[str], key: str = "modules") -> list[str]:
    """Names of the units matched by any pattern; a pattern that matches nothing raises ``ValueError``."""
    chosen: list[str] = []
    for pat in patterns:
        pat = str(pat)
        if pat.startswith("type:"):
            hits = [n for n, u in units.items() if fnmatchcase(u.kind, pat[5:])]
        else:
            hits = [n for n in units if fnmatchcase(n, pat)]
        if not hits:
            sample = ", ".join(list(units)[:8])
            raise ValueError(
                f"{key}: pattern {pat!r} matches no module; patterns are fnmatch on module names (e.g. {sample}, ...) "
                "or 'type:<ClassName pattern>' (e.g. type:BatchNorm*)"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return [n for n in units if n in chosen]  # module order


def default_patterns(method: nn.Module) -> tuple[str, ...]:
    """:data:`DEFAULT_VIT` for ViT backbones, :data:`DEFAULT_CNN` otherwise."""
    backbone = getattr(method, "backbone", None)
    return DEFAULT_VIT if bool(getattr(backbone, "is_vit", False)) else DEFAULT_CNN


def resolve_selection(
    method: nn.Module,
    modules: str | Sequence[str],
    scores: dict[str, float] | None = None,
    top: int = 5,
    key: str = "modules",
) -> list[str]:
    """Unit names selected by ``modules`` (``default`` | ``auto`` | patterns); ``auto`` needs ``scores``."""
    units = method_units(method)
    if isinstance(modules, str):
        if modules == "default":
            return match_units(units, default_patterns(method), key)
        if modules == "auto":
            if top < 1:
                raise ValueError(f"{key}_top={top}; must be a positive integer")
            if not scores:
                return match_units(units, default_patterns(method), key)  # nothing measured yet
            ranked = sorted((n for n in scores if n in units), key=lambda n: -scores[n])
            return [n for n in units if n in set(ranked[:top])]
        raise ValueError(f"{key}={modules!r}; allowed: {list(SELECTION_MODES)}")
    if not modules:
        raise ValueError(f"{key}=[] selects nothing; allowed: {list(SELECTION_MODES)}")
    return match_units(units, list(modules), key)


def selected_parameters(method: nn.Module, unit_names: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs of the named units."""
    units = method_units(method)
    return [pair for n in unit_names for pair in units[n].params]
