"""The native-setting cause analysis (experiments/unlearn_native): the many-class dataset and the ratio split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from experiments.unlearn_native.manyclass import load_digits_letters
from experiments.unlearn_native.ratio import head_name, ratios


def test_digits_letters_keeps_the_digits_and_appends_letter_classes():
    from cl.data.digits import load_digits

    digits = load_digits(8, 1)
    both = load_digits_letters(8, 1, n_letters=3, train_per_class=5, test_per_class=2)
    n_train, n_test = len(digits.train), len(digits.test)
    assert both.classes[:10] == [str(c) for c in range(10)] and both.classes[10:] == ["A", "B", "C"]
    assert len(both.train) == n_train + 15 and len(both.test) == n_test + 6
    assert torch.equal(both.train.images[:n_train], digits.train.images)  # the same digits, same split
    assert both.train.targets[:n_train] == digits.train.targets
    assert sorted(set(both.train.targets[n_train:])) == [10, 11, 12]
    letters = both.train.images[n_train:]
    assert letters.min() >= 0 and letters.max() <= 1 and letters.amax(dim=(1, 2, 3)).min() > 0  # no blank image
    assert not torch.equal(both.test.images[n_test : n_test + 2], letters[:2])  # test rendered with another seed
    with pytest.raises(ValueError, match="data.source.n_letters=39; allowed: 0 .. 38"):
        load_digits_letters(8, 1, n_letters=39)


def test_ratio_split_into_the_forgotten_head_row_and_the_rest():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4))
    assert head_name(model, 4) == "2"
    imp_d = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    imp_f = {n: torch.full_like(p, 0.5) for n, p in model.named_parameters()}
    imp_f["2.weight"][1] = 8.0  # the forgotten class's row
    imp_f["2.bias"][1] = 6.0
    imp_f["0.weight"][0, 0] = 3.0  # one shared weight
    row, rest, per = ratios(imp_f, imp_d, "2", 1)
    assert row.tolist() == [8.0, 8.0, 8.0, 6.0]
    n_total = sum(p.numel() for p in model.parameters())
    assert rest.numel() == n_total - 4 and float(rest.max()) == 3.0 and int((rest == 0.5).sum()) == n_total - 5
    assert torch.equal(per["2.weight"][1], torch.full((3,), 8.0))
