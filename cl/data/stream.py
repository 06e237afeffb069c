"""Task streams built with Avalanche's benchmark generators.

Avalanche decides the stream (class order from a seed, which classes each experience holds, task labels); the
framework keeps, for each experience, plain ``torch.utils.data.Subset`` views of the source datasets with their sample
indices, so that data loading stays as fast as a hand-written loop and unlearning can name exact samples.

Scenarios (``scenario.name``):

* ``class``: class-incremental (``nc_benchmark(task_labels=False)``); one head over all classes, no task id at test.
  The class order: ``class_order`` if given, else ``class_order_rule`` (:mod:`cl.data.class_order`) with
  ``class_order_seed``: Avalanche's seeded order, or the CODA-Prompt reference code's.
* ``task``: task-incremental (``nc_benchmark(task_labels=True)``); the task id is given at test time.
* ``domain``: domain-incremental (``benchmark_from_datasets``); every experience has all classes under a new input
  distribution: ``variant=rotated`` (one seeded angle in [0, 180) per experience, as Avalanche's RotatedMNIST) or
  ``variant=permuted`` (one seeded pixel permutation per experience, as PermutedMNIST).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset, Subset

from cl.data.class_order import check_rule, coda_reference_order
from cl.data.sources import SplitDatasets

SCENARIOS = ("class", "task", "domain")
DOMAIN_VARIANTS = ("rotated", "permuted")


@dataclass
class Experience:
    """One step of the stream: its classes, task label and the train/test views (with source indices)."""

    index: int
    classes: list[int]
    task_label: int
    train: Dataset
    test: Dataset
    train_indices: list[int] = field(default_factory=list)
    test_indices: list[int] = field(default_factory=list)


@dataclass
class Stream:
    """A list of experiences plus what the model needs to know about the label space."""

    scenario: str
    experiences: list[Experience]
    num_classes: int
    class_order: list[int]
    source: SplitDatasets

    def __len__(self) -> int:
        return len(self.experiences)


def _avalanche():
    """Import Avalanche with its config folder kept out of the user's HOME when AVALANCHE_HOME is set."""
    if "AVALANCHE_HOME" in os.environ:  # Avalanche writes ~/.avalanche/config.json at import
        os.environ.setdefault("HOME", os.environ["AVALANCHE_HOME"])
    import avalanche.benchmarks as benchmarks

    return benchmarks


def _check_divisible(n_classes: int, n_experiences: int, classes_per_exp: int | None) -> None:
    if n_experiences < 1:
        raise ValueError(f"scenario.n_experiences={n_experiences}; allowed: a positive integer")
    if classes_per_exp is not None:
        if classes_per_exp * n_experiences != n_classes:
            raise ValueError(
                f"scenario.classes_per_exp={classes_per_exp} x scenario.n_experiences={n_experiences} != "
                f"{n_classes} classes in the dataset"
            )
    elif n_classes % n_experiences:
        divisors = [d for d in range(1, n_classes + 1) if n_classes % d == 0]
        raise ValueError(
            f"scenario.n_experiences={n_experiences} does not divide the {n_classes} classes of the dataset; "
            f"allowed values: {divisors}"
        )


def build_stream(
    datasets: SplitDatasets,
    name: str = "class",
    n_experiences: int = 5,
    class_order_seed: int = 0,
    class_order: Sequence[int] | None = None,
    variant: str = "rotated",
    domain_seed: int = 0,
    class_order_rule: str = "avalanche",
) -> Stream:
    """Build the stream for ``scenario.name`` (see the module docstring); raises ``ValueError`` on bad config.
    ``class_order`` (an explicit permutation) wins over ``class_order_rule`` (:mod:`cl.data.class_order`)."""
    if name not in SCENARIOS:
        raise ValueError(f"scenario.name={name!r}; allowed: {list(SCENARIOS)}")
    check_rule(class_order_rule)
    if name == "domain":
        return _domain_stream(datasets, n_experiences, variant, domain_seed)
    n_classes = len(datasets.classes)
    _check_divisible(n_classes, n_experiences, None)
    if class_order is not None:
        class_order = [int(c) for c in class_order]
        if sorted(class_order) != list(range(n_classes)):
            raise ValueError(f"scenario.class_order must be a permutation of 0..{n_classes - 1}; got {class_order}")
    elif class_order_rule == "coda_reference":
        class_order = coda_reference_order(n_classes, class_order_seed)
    bench = _avalanche().nc_benchmark(
        datasets.train,
        datasets.test,
        n_experiences=n_experiences,
        task_labels=name == "task",
        seed=class_order_seed,
        fixed_class_order=class_order,
        class_ids_from_zero_in_each_exp=False,
        class_ids_from_zero_from_first_exp=False,
    )
    train_targets = torch.as_tensor(datasets.train.targets)
    test_targets = torch.as_tensor(datasets.test.targets)
    experiences = []
    for i, (tr, te) in enumerate(zip(bench.train_stream, bench.test_stream, strict=True)):
        classes = sorted(int(c) for c in tr.classes_in_this_experience)
        cls = torch.tensor(classes)
        train_idx = torch.nonzero(torch.isin(train_targets, cls)).flatten().tolist()
        test_idx = torch.nonzero(torch.isin(test_targets, cls)).flatten().tolist()
        experiences.append(
            Experience(
                index=i,
                classes=classes,
                task_label=int(tr.task_label) if name == "task" else 0,
                train=Subset(datasets.train, train_idx),
                test=Subset(datasets.test, test_idx),
                train_indices=train_idx,
                test_indices=test_idx,
            )
        )
        if len(train_idx) != len(tr.dataset) or len(test_idx) != len(te.dataset):
            raise RuntimeError("stream views disagree with Avalanche's experience datasets")
    return Stream(name, experiences, n_classes, [int(c) for c in bench.classes_order], datasets)


class _DomainShift(Dataset):
    """A dataset seen through a fixed per-experience input transform (rotation or pixel permutation)."""

    def __init__(self, base: Dataset, variant: str, param: float | torch.Tensor) -> None:
        self.base, self.variant, self.param = base, variant, param
        self.targets = list(base.targets)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.base[index]
        if self.variant == "rotated":
            from torchvision.transforms.functional import rotate

            x = rotate(x, float(self.param))
        else:
            x = x.flatten(1)[:, self.param].view_as(x)
        return x, y


def _domain_stream(datasets: SplitDatasets, n_experiences: int, variant: str, seed: int) -> Stream:
    if variant not in DOMAIN_VARIANTS:
        raise ValueError(f"scenario.variant={variant!r}; allowed: {list(DOMAIN_VARIANTS)}")
    if n_experiences < 1:
        raise ValueError(f"scenario.n_experiences={n_experiences}; allowed: a positive integer")
    gen = torch.Generator().manual_seed(seed)
    x0, _ = datasets.train[0]
    params: list[float | torch.Tensor] = []
    for _ in range(n_experiences):
        if variant == "rotated":
            params.append(float(torch.rand((), generator=gen)) * 180.0)
        else:
            params.append(torch.randperm(x0[0].numel(), generator=gen))
    trains = [_DomainShift(datasets.train, variant, p) for p in params]
    tests = [_DomainShift(datasets.test, variant, p) for p in params]
    benchmarks = _avalanche()
    from avalanche.benchmarks.utils import as_classification_dataset

    bench = benchmarks.benchmark_from_datasets(
        train=[as_classification_dataset(d) for d in trains], test=[as_classification_dataset(d) for d in tests]
    )
    n_classes = len(datasets.classes)
    all_train, all_test = list(range(len(datasets.train))), list(range(len(datasets.test)))
    experiences = [
        Experience(i, list(range(n_classes)), 0, trains[i], tests[i], all_train, all_test)
        for i in range(len(bench.train_stream))
    ]
    return Stream("domain", experiences, n_classes, list(range(n_classes)), datasets)
