"""Forget-set specifications (``conf/forget/``) and the forget / retain / test splits they produce.

Every spec selects training samples among the data the checkpoint has seen (experiences ``0..t``):

* ``class``: every training sample of ``forget.classes`` (indices or class names, e.g. ``[rocket]``); their test
  samples form the forget-test split.
* ``task``: every class of experience ``forget.experience`` (class / task streams).
* ``random``: a seeded ``forget.fraction`` or ``forget.count`` of the training samples (no forget-test split).
* ``subclass``: one fine class ``forget.fine_class`` inside its coarse class (datasets with coarse labels, e.g.
  CIFAR-100's 20 super-classes); the other fine classes of that coarse class stay in the retain set. On a model
  trained on the super-classes (``data=cifar20``, SSD's sub-class setting) the fine labels pick the samples.
* ``indices``: a file of sample indices (one source index per line, or the ``experience,index`` CSV this module
  writes), or an earlier unlearning run directory, whose exact forget-train / forget-test splits are reused.

Bad input (a class never seen, an empty forget set, a forget set equal to the whole training set, ...) raises
:class:`ForgetError` naming the config key, the value and what is allowed, before any work.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.data import Key, experience_keys, labels_of

SPLIT_NAMES = ("forget_train", "retain_train", "forget_test", "retain_test", "test")


class ForgetError(ValueError):
    """A forget specification that cannot be applied to the checkpoint."""


@dataclass
class SeenData:
    """What the checkpoint has seen: experiences ``0..t`` of the stream, their train/test keys and labels."""

    stream: Any
    experience: int

    def __post_init__(self) -> None:
        self.experiences = list(range(self.experience + 1))
        self.train_keys = experience_keys(self.stream, self.experiences, "train")
        self.test_keys = experience_keys(self.stream, self.experiences, "test")
        self.train_labels = labels_of(self.stream, self.train_keys, "train")
        self.test_labels = labels_of(self.stream, self.test_keys, "test")
        self.classes = sorted({c for e in self.experiences for c in self.stream.experiences[e].classes})


@dataclass
class Split:
    """Keys of the five splits; ``forget_test`` is empty for sample-level forgets (random, indices)."""

    forget_train: list[Key]
    retain_train: list[Key]
    forget_test: list[Key]
    retain_test: list[Key]
    test: list[Key]
    forget_classes: list[int] = field(default_factory=list)

    def digest(self) -> str:
        """A short hash of the forget-train and forget-test keys: equal digests mean the same split."""
        text = repr((sorted(self.forget_train), sorted(self.forget_test)))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def class_index(c: int | str, names: list[str] | None, key: str) -> int:
    """A class given by index or by name (``forget.classes=[rocket]``: CIFAR-100's class names, as SSD's scripts)."""
    if isinstance(c, int):
        return c
    if names and c in names:
        return list(names).index(c)
    import difflib

    near = difflib.get_close_matches(c, list(names or []), n=3)
    raise ForgetError(
        f"{key}: {c!r} is not a class name of this dataset"
        + (f" (did you mean {near}?)" if near else "")
        + ("; give class indices" if not names else f"; allowed: an index or one of its {len(names)} class names")
    )


def _class_split(seen: SeenData, classes: list[int]) -> tuple[list[Key], list[Key]]:
    cs = set(classes)
    f_tr = [k for k, y in zip(seen.train_keys, seen.train_labels, strict=True) if y in cs]
    f_te = [k for k, y in zip(seen.test_keys, seen.test_labels, strict=True) if y in cs]
    return f_tr, f_te


class ClassForget:
    """Forget every training sample of one or more classes."""

    name = "class"

    def __init__(self, classes: list[int | str] | int | str | None = None, name: str = "class") -> None:
        items = [classes] if isinstance(classes, int | str) else list(classes or [])
        self.classes = [c if isinstance(c, str) and not c.lstrip("-").isdigit() else int(c) for c in items]

    def select(self, seen: SeenData) -> tuple[list[Key], list[Key], list[int]]:
        if not self.classes:
            raise ForgetError(f"forget.classes is empty; give forget.classes=[c, ...] with c in {seen.classes}")
        names = getattr(seen.stream.source, "classes", None)
        self.classes = [class_index(c, names, "forget.classes") for c in self.classes]
        unseen = [c for c in self.classes if c not in seen.classes]
        if unseen:
            raise ForgetError(
                f"forget.classes={self.classes}: class(es) {unseen} were never seen by the checkpoint "
                f"(experiences 0..{seen.experience}); allowed: {seen.classes}"
            )
        return (*_class_split(seen, self.classes), sorted(self.classes))


class TaskForget:
    """Forget every class of one experience."""

    name = "task"

    def __init__(self, experience: int | None = None, name: str = "task") -> None:
        self.experience = experience

    def select(self, seen: SeenData) -> tuple[list[Key], list[Key], list[int]]:
        if seen.stream.scenario == "domain":
            raise ForgetError(
                "forget=task needs a class- or task-incremental stream (scenario.name=domain shares classes)"
            )
        if self.experience is None or not 0 <= int(self.experience) <= seen.experience:
            raise ForgetError(
                f"forget.experience={self.experience}; allowed: an experience the checkpoint has seen, "
                f"0..{seen.experience}"
            )
        classes = list(seen.stream.experiences[int(self.experience)].classes)
        return (*_class_split(seen, classes), sorted(classes))


class RandomForget:
    """Forget a seeded random ``fraction`` or ``count`` of the seen training samples."""

    name = "random"

    def __init__(
        self, fraction: float | None = None, count: int | None = None, seed: int = 0, name: str = "random"
    ) -> None:
        for key, value in (("fraction", fraction), ("count", count), ("seed", seed)):
            number = int | float if key == "fraction" else int
            if value is not None and (not isinstance(value, number) or isinstance(value, bool)):
                allowed = "a number in (0, 1)" if key == "fraction" else "an integer"
                raise ForgetError(f"forget.{key}={value!r}; allowed: {allowed}")
        self.fraction, self.count, self.seed = fraction, count, int(seed)

    def select(self, seen: SeenData) -> tuple[list[Key], list[Key], list[int]]:
        import numpy as np

        n = len(seen.train_keys)
        if (self.fraction is None) == (self.count is None):
            raise ForgetError(
                f"forget.fraction={self.fraction}, forget.count={self.count}: set exactly one of them "
                f"(fraction in (0, 1), or count in 1..{n - 1})"
            )
        if self.fraction is not None:
            if not 0.0 < float(self.fraction) < 1.0:
                raise ForgetError(f"forget.fraction={self.fraction}; allowed: (0, 1)")
            k = int(round(float(self.fraction) * n))
        else:
            k = int(self.count)
        if not 1 <= k < n:
            raise ForgetError(
                f"forget.count/fraction selects {k} of {n} training samples; allowed: 1..{n - 1} "
                "(an empty forget set, or the whole training set, is refused)"
            )
        rng = np.random.default_rng(self.seed)
        pick = sorted(rng.choice(n, size=k, replace=False).tolist())
        return [seen.train_keys[i] for i in pick], [], []


class SubclassForget:
    """Forget one fine class while the other fine classes of its coarse class stay in the retain set."""

    name = "subclass"

    def __init__(self, fine_class: int | str | None = None, name: str = "subclass") -> None:
        self.fine_class = fine_class

    def select(self, seen: SeenData) -> tuple[list[Key], list[Key], list[int]]:
        if getattr(seen.stream.source.train, "fine_targets", None) is not None:
            return self._select_in_coarse(seen)
        coarse = seen.stream.source.coarse_train
        if coarse is None:
            raise ForgetError(
                "forget=subclass needs a dataset with coarse labels (e.g. data=cifar100); this checkpoint's data "
                "has none; use forget=class"
            )
        if self.fine_class is None:
            raise ForgetError(f"forget.fine_class is not set; allowed: a seen class in {seen.classes}")
        names = getattr(seen.stream.source, "classes", None)
        fine = class_index(_int_or_name(self.fine_class), names, "forget.fine_class")
        if fine not in seen.classes:
            raise ForgetError(f"forget.fine_class={self.fine_class}; allowed: a seen class in {seen.classes}")
        sup = {coarse[i] for (_, i), y in zip(seen.train_keys, seen.train_labels, strict=True) if y == fine}
        siblings = {y for (_, i), y in zip(seen.train_keys, seen.train_labels, strict=True) if coarse[i] in sup} - {
            fine
        }
        if not siblings:
            raise ForgetError(
                f"forget.fine_class={fine}: no other seen fine class shares its coarse class; this is class "
                "forgetting (use forget=class)"
            )
        return (*_class_split(seen, [fine]), [fine])

    def _select_in_coarse(self, seen: SeenData) -> tuple[list[Key], list[Key], list[int]]:
        """The model was trained on the super-classes (``data=cifar20``, SSD's sub-class setting): forget every sample
        whose *fine* label is ``fine_class``; its super-class stays a trained class (its other fine classes are
        retained), so no class is forgotten as a whole (``forget_classes`` is empty)."""
        train, test = seen.stream.source.train, seen.stream.source.test
        names = getattr(train, "fine_classes", None)
        if self.fine_class is None:
            raise ForgetError(f"forget.fine_class is not set; allowed: a fine class index or name ({names[:3]}...)")
        fine = class_index(_int_or_name(self.fine_class), names, "forget.fine_class")
        f_tr = [k for k in seen.train_keys if train.fine_targets[k[1]] == fine]
        f_te = [k for k in seen.test_keys if test.fine_targets[k[1]] == fine]
        sup = {y for k, y in zip(seen.train_keys, seen.train_labels, strict=True) if train.fine_targets[k[1]] == fine}
        siblings = {
            train.fine_targets[k[1]] for k, y in zip(seen.train_keys, seen.train_labels, strict=True) if y in sup
        } - {fine}
        if not f_tr or not siblings:
            raise ForgetError(
                f"forget.fine_class={self.fine_class}: "
                + ("no seen training sample has this fine label" if not f_tr else "its super-class has no other fine")
                + " class; allowed: a fine class whose super-class the checkpoint has seen with other fine classes"
            )
        return f_tr, f_te, []


def _int_or_name(c: int | str) -> int | str:
    return int(c) if isinstance(c, int) or str(c).lstrip("-").isdigit() else str(c)


class IndicesForget:
    """Forget the samples listed in a file, or reuse an earlier unlearning run's exact split."""

    name = "indices"

    def __init__(self, path: str | None = None, name: str = "indices") -> None:
        self.path = path

    def select(self, seen: SeenData) -> tuple[list[Key], list[Key], list[int]]:
        if not self.path:
            raise ForgetError("forget.path is empty; give a file of sample indices or an unlearning run directory")
        p = Path(self.path)
        if p.is_dir():
            folder = p / "splits" if (p / "splits").is_dir() else p
            if not (folder / "forget_train.csv").is_file():
                raise ForgetError(f"forget.path={self.path!r}: no splits/forget_train.csv inside")
            f_tr = _resolve(read_keys(folder / "forget_train.csv"), seen.train_keys, "forget_train.csv", self.path)
            f_te = []
            if (folder / "forget_test.csv").is_file():
                f_te = _resolve(read_keys(folder / "forget_test.csv"), seen.test_keys, "forget_test.csv", self.path)
            return f_tr, f_te, []
        if not p.is_file():
            raise ForgetError(f"forget.path={self.path!r} does not exist")
        return _resolve(read_keys(p), seen.train_keys, p.name, self.path), [], []


def _resolve(entries: list[Key | int], keys: list[Key], what: str, path: str) -> list[Key]:
    """Keys of ``entries`` (bare ints match that source index in every seen experience); unknown ones are refused."""
    known = set(keys)
    by_index: dict[int, list[Key]] = {}
    for k in keys:
        by_index.setdefault(k[1], []).append(k)
    out, bad = [], []
    for ent in entries:
        hits = ([ent] if ent in known else []) if isinstance(ent, tuple) else by_index.get(ent, [])
        (out.extend(hits) if hits else bad.append(ent))
    if bad:
        raise ForgetError(
            f"forget.path={path!r} ({what}): {len(bad)} entries are not samples the checkpoint has seen, e.g. {bad[:5]}"
        )
    return sorted(set(out))


def read_keys(path: Path) -> list[Key | int]:
    """Parse a split file: the ``experience,index[,label]`` CSV written by :func:`write_splits`, or one int a line."""
    numbered = [(i + 1, ln.strip()) for i, ln in enumerate(Path(path).read_text().splitlines())]
    lines = [(i, ln) for i, ln in numbered if ln and not ln.startswith("#")]
    csv = bool(lines) and lines[0][1].startswith("experience")
    out: list[Key | int] = []
    for i, ln in lines[1:] if csv else lines:
        fields = [f.strip() for f in ln.split(",")]
        if csv and len(fields) not in (2, 3) or not csv and len(fields) != 1 or not all(_is_int(f) for f in fields):
            expected = "experience,index[,label] (integers)" if csv else "one integer index"
            raise ForgetError(f"{str(path)!r} line {i}: {ln!r} is not {expected}; nothing was unlearned")
        out.append((int(fields[0]), int(fields[1])) if csv else int(fields[0]))
    return out


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def make_split(spec: Any, seen: SeenData) -> Split:
    """Apply ``spec`` to ``seen`` and check the result is a proper, non-trivial forget set."""
    f_tr, f_te, classes = spec.select(seen)
    name = getattr(spec, "name", type(spec).__name__)
    if not f_tr:
        raise ForgetError(f"forget={name}: the forget set is empty (nothing of the seen training data matches)")
    fs = set(f_tr)
    retain = [k for k in seen.train_keys if k not in fs]
    if not retain:
        raise ForgetError(
            f"forget={name}: the forget set is the whole training set ({len(f_tr)} samples); nothing would remain "
            "to retain: retrain from scratch instead"
        )
    ft = set(f_te)
    return Split(
        forget_train=[k for k in seen.train_keys if k in fs],
        retain_train=retain,
        forget_test=[k for k in seen.test_keys if k in ft],
        retain_test=[k for k in seen.test_keys if k not in ft],
        test=list(seen.test_keys),
        forget_classes=list(classes),
    )


def write_splits(split: Split, stream: Any, folder: Path) -> None:
    """Write ``folder/<split>.csv`` (``experience,index,label``) for every split, atomically."""
    from cl.utils.atomic import write_text

    for name in SPLIT_NAMES:
        keys = getattr(split, name)
        labels = labels_of(stream, keys, "train" if name.endswith("train") else "test")
        rows = "".join(f"{e},{i},{y}\n" for (e, i), y in zip(keys, labels, strict=True))
        write_text(Path(folder) / f"{name}.csv", "experience,index,label\n" + rows)
