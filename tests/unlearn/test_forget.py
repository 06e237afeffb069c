"""Forget specifications on a hand-built stream: which samples each selects, and the errors for bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from unlearn.forget import (
    ClassForget,
    ForgetError,
    IndicesForget,
    RandomForget,
    SeenData,
    SubclassForget,
    TaskForget,
    make_split,
    read_keys,
    write_splits,
)

TRAIN_Y = [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 4, 5]  # source train labels, index = position
TEST_Y = [0, 1, 2, 3, 4, 5]
COARSE = [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 2, 2]  # coarse of 0,1 = 0; of 2,3 = 1; of 4,5 = 2


def _stream(coarse=None):
    exps = []
    for classes in ([0, 1], [2, 3], [4, 5]):
        tr = [i for i, y in enumerate(TRAIN_Y) if y in classes]
        te = [i for i, y in enumerate(TEST_Y) if y in classes]
        exps.append(SimpleNamespace(classes=classes, train_indices=tr, test_indices=te))
    source = SimpleNamespace(
        train=SimpleNamespace(targets=TRAIN_Y), test=SimpleNamespace(targets=TEST_Y), coarse_train=coarse
    )
    return SimpleNamespace(experiences=exps, source=source, scenario="class")


def test_class_and_task_forgets_split_train_and_test_by_label():
    seen = SeenData(_stream(), 1)  # experiences 0..1: classes 0-3, train indices 0-7
    s = make_split(ClassForget([2]), seen)
    assert s.forget_train == [(1, 2), (1, 6)] and s.forget_test == [(1, 2)]
    assert sorted(s.retain_train + s.forget_train) == sorted(seen.train_keys) and len(s.test) == 4
    assert s.retain_test == [(0, 0), (0, 1), (1, 3)]
    t = make_split(TaskForget(1), seen)
    assert [i for _, i in t.forget_train] == [2, 3, 6, 7] and t.forget_classes == [2, 3]


def test_random_forget_is_seeded_and_sized():
    seen = SeenData(_stream(), 2)
    a = make_split(RandomForget(count=3, seed=1), seen)
    assert a.forget_train == make_split(RandomForget(count=3, seed=1), seen).forget_train
    assert len(a.forget_train) == 3 and a.forget_test == [] and len(a.retain_test) == 6
    assert len(make_split(RandomForget(fraction=0.5, seed=0), seen).forget_train) == 6


def test_subclass_needs_coarse_labels_and_siblings():
    with pytest.raises(ForgetError, match="needs a dataset with coarse labels"):
        make_split(SubclassForget(1), SeenData(_stream(), 2))
    s = make_split(SubclassForget(1), SeenData(_stream(COARSE), 2))
    assert [i for _, i in s.forget_train] == [1, 5] and (0, 0) in s.retain_train  # sibling 0 stays
    with pytest.raises(ForgetError, match="no other seen fine class shares its coarse class"):
        make_split(SubclassForget(1), SeenData(_stream([0, 3, 1, 1, 0, 3, 1, 1, 2, 2, 2, 2]), 2))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ClassForget([5]), r"class\(es\) \[5\] were never seen .* allowed: \[0, 1, 2, 3\]"),
        (ClassForget([]), "forget.classes is empty"),
        (ClassForget([0, 1, 2, 3]), "the whole training set"),
        (TaskForget(2), "forget.experience=2; allowed"),
        (RandomForget(count=8), r"allowed: 1..7"),
        (RandomForget(fraction=0.5, count=2), "set exactly one"),
        (IndicesForget("/nonexistent/file.txt"), "does not exist"),
    ],
)
def test_bad_specs_are_refused_with_the_key_and_the_allowed_values(spec, message):
    with pytest.raises(ForgetError, match=message):
        make_split(spec, SeenData(_stream(), 1))


def test_written_splits_reload_as_the_same_split(tmp_path):
    seen = SeenData(_stream(), 2)
    s = make_split(ClassForget([4]), seen)
    write_splits(s, seen.stream, tmp_path / "splits")
    assert read_keys(tmp_path / "splits" / "forget_train.csv") == s.forget_train
    again = make_split(IndicesForget(str(tmp_path)), seen)
    assert again.digest() == s.digest() and again.forget_test == s.forget_test
    (tmp_path / "ids.txt").write_text("0\n4\n")
    assert make_split(IndicesForget(str(tmp_path / "ids.txt")), seen).forget_train == [(0, 0), (0, 4)]
    (tmp_path / "bad.txt").write_text("0\n99\n")
    with pytest.raises(ForgetError, match=r"1 entries are not samples the checkpoint has seen, e.g. \[99\]"):
        make_split(IndicesForget(str(tmp_path / "bad.txt")), seen)


def test_classes_by_name_and_subclass_on_a_superclass_model():
    stream = _stream()
    stream.source.classes = ["zero", "one", "two", "three", "four", "five"]
    s = make_split(ClassForget(["two", 3]), SeenData(stream, 1))
    assert s.forget_classes == [2, 3] and [i for _, i in s.forget_train] == [2, 3, 6, 7]
    with pytest.raises(ForgetError, match=r"'tow' is not a class name.*did you mean \['two'\]"):
        make_split(ClassForget(["tow"]), SeenData(stream, 1))
    # a model trained on super-classes (data=cifar20): labels are TRAIN_Y, fine labels pick the forget samples
    fine_tr = [10 * y + (i // 4) % 2 for i, y in enumerate(TRAIN_Y)]  # two fine classes per label: 10y, 10y + 1
    stream.source.train.fine_targets, stream.source.train.fine_classes = fine_tr, [f"f{i}" for i in range(60)]
    stream.source.test.fine_targets = [10 * y for y in TEST_Y]
    sub = make_split(SubclassForget("f20"), SeenData(stream, 2))  # fine 20: label 2, train index 2 (index 6: 21)
    assert [i for _, i in sub.forget_train] == [2] and [i for _, i in sub.forget_test] == [2]
    assert sub.forget_classes == [] and (1, 6) in sub.retain_train  # its sibling fine 21 (same label 2) is retained
    with pytest.raises(ForgetError, match="no seen training sample has this fine label"):
        make_split(SubclassForget("f59"), SeenData(stream, 2))
