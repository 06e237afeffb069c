"""Class orders of a class-/task-incremental stream (``scenario.class_order_rule``).

* ``avalanche`` (default): Avalanche's ``nc_benchmark(seed=scenario.class_order_seed)``, a ``torch.randperm`` order.
* ``coda_reference``: the order of the CODA-Prompt reference code (Smith et al., CVPR 2023, arXiv 2211.13218;
  github.com/GT-RIPL/CODA-Prompt, ``trainer.py``, ``Trainer.__init__``), which its ``run.py`` seeds with the repeat
  index ``r = 0, 1, ...``: the natural order ``0..C-1`` for the first repeat (seed 0), and for seed ``s > 0``
  ``random.seed(s); random.shuffle(order)`` (Python's Mersenne Twister; every preset config has ``rand_split: True``).
  With ``class_order_seed=${seed}``, run ``seed=s`` sees the classes in the order of the reference's repeat ``s``, so
  paper-protocol runs can be compared with the reference run for run. The reference also relabels classes by their
  position in that order; the framework keeps the dataset's class ids, which changes no accuracy.
"""

from __future__ import annotations

import random

CLASS_ORDER_RULES = ("avalanche", "coda_reference")


def coda_reference_order(n_classes: int, seed: int) -> list[int]:
    """The class order of CODA-Prompt's ``trainer.py`` for repeat ``seed`` (see the module docstring)."""
    if n_classes < 1:
        raise ValueError(f"n_classes={n_classes}; must be positive")
    if seed < 0:
        raise ValueError(f"scenario.class_order_seed={seed}; allowed with class_order_rule=coda_reference: an int >= 0")
    order = list(range(n_classes))
    if seed > 0:
        random.Random(seed).shuffle(order)  # = random.seed(seed); random.shuffle(order), without touching global state
    return order


def check_rule(rule: str) -> None:
    if rule not in CLASS_ORDER_RULES:
        raise ValueError(f"scenario.class_order_rule={rule!r}; allowed: {list(CLASS_ORDER_RULES)}")
