"""The Avalanche-built streams over the digits: class order, experience contents, scenarios, bad input."""

from __future__ import annotations

import pytest
import torch

from cl.data.digits import load_digits
from cl.data.stream import build_stream


@pytest.fixture(scope="module")
def digits():
    return load_digits(image_size=8)


def test_digits_split_is_fixed_and_real(digits):
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.test) == 450
    x, y = digits.train[0]
    assert x.shape == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    again = load_digits(image_size=8)
    assert torch.equal(again.test.images, digits.test.images)


def test_class_incremental_partitions_classes_by_seed(digits):
    s0 = build_stream(digits, "class", 5, class_order_seed=0)
    s1 = build_stream(digits, "class", 5, class_order_seed=1)
    classes = [c for e in s0.experiences for c in e.classes]
    assert sorted(classes) == list(range(10)) and all(len(e.classes) == 2 for e in s0.experiences)
    assert s0.class_order != s1.class_order
    assert build_stream(digits, "class", 5, class_order_seed=0).class_order == s0.class_order
    for e in s0.experiences:
        labels = {int(y) for _, y in e.train}
        assert labels == set(e.classes)
        assert [digits.train.targets[i] for i in e.train_indices] == [int(y) for _, y in e.train]
    assert sum(len(e.train) for e in s0.experiences) == len(digits.train)


def test_explicit_class_order(digits):
    s = build_stream(digits, "class", 2, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert s.experiences[0].classes == [5, 6, 7, 8, 9]


def test_task_incremental_has_task_labels(digits):
    s = build_stream(digits, "task", 5)
    assert [e.task_label for e in s.experiences] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("variant", ["rotated", "permuted"])
def test_domain_incremental_shifts_inputs_keeps_labels(digits, variant):
    s = build_stream(digits, "domain", 3, variant=variant)
    assert len(s) == 3 and s.num_classes == 10
    x0, y0 = s.experiences[0].train[5]
    x1, y1 = s.experiences[1].train[5]
    assert y0 == y1 and x0.shape == x1.shape and not torch.allclose(x0, x1)
    if variant == "permuted":  # a permutation keeps the multiset of pixel values
        assert torch.equal(x0.flatten().sort().values, x1.flatten().sort().values)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"name": "class", "n_experiences": 3},
            r"scenario.n_experiences=3 does not divide.*allowed values: \[1, 2, 5, 10\]",
        ),
        ({"name": "online"}, r"scenario.name='online'; allowed: \['class', 'task', 'domain'\]"),
        ({"name": "class", "class_order": [0, 1]}, r"scenario.class_order must be a permutation"),
        ({"name": "domain", "variant": "blurred"}, r"scenario.variant='blurred'; allowed"),
    ],
)
def test_bad_scenarios_are_refused(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_stream(digits, **kwargs)
