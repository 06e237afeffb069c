"""SSD's paper presets (``conf/experiment/ssd_cifar100_resnet18.yaml``, ``ssd_cifar100_vit``, ``ssd_cifar20``,
``ssd_cifar20_vit``): the composed training recipe is the reference code's (github if-loops/selective-synaptic-dampening
``src/pretrain_model.py`` + ``src/conf.py``), its learning-rate schedule equals a transcription of the reference's
WarmUpLR + MultiStepLR loop step by step, and a tiny run on files laid out like CIFAR-100 trains with the preset and
unlearns the paper's classes by name (full-class on CIFAR-100; sub-class and super-class on CIFAR-20) with the
reference's alphas."""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.data.test_sources_cifar import _dump, _rows
from tests.helpers import compose_config, run_cl

CIFAR_MEAN = [0.5070751592371323, 0.48654887331495095, 0.4409178433670343]
# (preset, data, image size, epochs, milestones): reference src/conf.py
RECIPES = [
    ("ssd_cifar100_resnet18", "cifar100", 32, 200, [60, 120, 160]),
    ("ssd_cifar20", "cifar20", 32, 40, [15, 30, 35]),
    ("ssd_cifar100_vit", "cifar100", 224, 8, [7]),
    ("ssd_cifar20_vit", "cifar20", 224, 9, [8]),
]
# the official CIFAR-100 super-class of the fine classes the tiny files name (meta: coarse_label_names)
NAMED = {2: ("baby", 14), 40: ("lamp", 5), 51: ("mushroom", 4), 69: ("rocket", 19), 71: ("sea", 10)}
SIBLINGS_OF_ROCKET = (41, 81, 85, 89)  # lawn_mower, streetcar, tank, tractor: vehicles_2 as well
COARSE_NAMES = {19: "vehicles_2", 10: "large_natural_outdoor_scenes", 14: "people", 5: "household_electrical_devices"}


@pytest.mark.parametrize(("preset", "data", "size", "epochs", "milestones"), RECIPES)
def test_preset_composes_the_reference_recipe(tmp_path, preset, data, size, epochs, milestones):
    cfg = compose_config([f"experiment={preset}"], tmp_path, shrink=False)
    assert cfg.data.name == data and cfg.data.image_size == size and cfg.data.batch_size == 64
    assert cfg.scenario.n_experiences == 1 and cfg.method.name == "finetune"
    opt = cfg.method.optimizer
    assert opt._target_ == "torch.optim.SGD" and (opt.lr, opt.momentum, opt.weight_decay) == (0.1, 0.9, 0.0005)
    sched = cfg.method.scheduler
    assert list(sched.milestones) == milestones and sched.gamma == 0.2 and sched.warmup_epochs == 1
    assert cfg.method.scheduler_interval == "step" and cfg.trainer.max_epochs == epochs
    src = cfg.data.source
    assert src.augment and src.rotation == 15 and list(src.mean) == CIFAR_MEAN
    assert src.get("labels", "fine") == ("coarse" if data == "cifar20" else "fine")
    if size == 32:
        assert (
            cfg.backbone.name == "resnet18"
            and cfg.backbone.cifar_stem
            and list(cfg.backbone.channels)
            == [
                64,
                128,
                256,
                512,
            ]
        )
    else:  # google/vit-base-patch16-224 = timm's original in21k -> in1k fine-tune
        assert cfg.backbone.name == "vit_base_patch16_224.orig_in21k_ft_in1k" and "channels" not in cfg.backbone


class _WarmUpLR(torch.optim.lr_scheduler.LRScheduler):
    """Transcription of weiaicunzai/pytorch-cifar100 ``utils.WarmUpLR``: base_lr * last_epoch / (total_iters + 1e-8)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_iters: int) -> None:
        self.total_iters = total_iters
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [b * self.last_epoch / (self.total_iters + 1e-8) for b in self.base_lrs]


def reference_lrs(steps_per_epoch: int, epochs: int, milestones: list[int], warm: int = 1) -> list[float]:
    """The lr of every batch in the reference's loop (pretrain_model.py: ``train_scheduler.step(epoch)`` before an
    epoch past warm-up, i.e. MultiStepLR's closed form base * gamma ** bisect_right(milestones, epoch); the warm-up
    scheduler stepped after every batch of the warm-up epochs)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    warmup = _WarmUpLR(opt, steps_per_epoch * warm)
    out = []
    for epoch in range(1, epochs + 1):
        if epoch > warm:
            for g in opt.param_groups:
                g["lr"] = 0.1 * 0.2 ** bisect.bisect_right(milestones, epoch)
        for _ in range(steps_per_epoch):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if epoch <= warm:
                warmup.step()
    return out


def test_schedule_equals_the_reference_loop_and_gets_its_steps_per_epoch(tmp_path):
    from cl.experiment import build

    cfg = compose_config(
        ["experiment=ssd_cifar100_resnet18", "data=digits", "backbone.img_size=32", "backbone.channels=[4,4,4,4]"],
        tmp_path,
        shrink=False,
    )
    cfg.data.source = compose_config(["data=digits"], tmp_path, shrink=False).data.source  # no CIFAR files needed
    cfg.method.scheduler.milestones = [3, 5, 6]
    _, method = build(cfg)
    method._trainer = SimpleNamespace(max_epochs=7, estimated_stepping_batches=7 * 4)  # 4 optimizer steps an epoch
    conf = method.configure_optimizers()
    sched, opt = conf["lr_scheduler"]["scheduler"], conf["optimizer"]
    assert conf["lr_scheduler"]["interval"] == "step"
    ours = []
    for _ in range(7 * 4):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ref = reference_lrs(4, 7, [3, 5, 6])
    assert ref[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1 * 0.2**0])  # warm-up, then epoch 2 at the base lr
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-9)
    assert ours[-1] == pytest.approx(0.1 * 0.2**3)


def write_cifar100_named(root: Path, per_class: int = 2, per_class_test: int = 1) -> None:
    """cifar-100-python/{train,test,meta} in the official layout: every fine class present, the paper's five classes
    under their real names and indices, the real super-class of the named classes and of rocket's siblings."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = [NAMED[i][0] if i in NAMED else f"fine_{i:02d}" for i in range(100)]
    coarse_of = {i: (NAMED[i][1] if i in NAMED else 19 if i in SIBLINGS_OF_ROCKET else i % 19) for i in range(100)}
    rng = np.random.default_rng(0)
    for name, k in (("train", per_class), ("test", per_class_test)):
        fine = [c for _ in range(k) for c in range(100)]
        images = rng.integers(0, 256, size=(len(fine), 32, 32, 3), dtype=np.uint8)
        _dump(
            folder / name,
            {
                "filenames": [f"{j}.png" for j in range(len(fine))],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": [coarse_of[c] for c in fine],
                "data": _rows(images),
            },
        )
    coarse_names = [COARSE_NAMES.get(i, f"coarse_{i:02d}") for i in range(20)]
    _dump(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})


def _train(preset: str, data_dir: Path, run_dir: Path) -> Path:
    torch.manual_seed(0)
    ov = [
        f"experiment={preset}",
        f"paths.data_dir={data_dir}",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        "data.batch_size=64",
        "data.num_workers=0",
        "backbone.channels=[8,8,8,8]",
        "logger=none",
        "callbacks.flops=null",
    ]
    run_cl(compose_config(ov, run_dir))
    return run_dir


def _unlearn(ckpt: Path, out: Path, *overrides: str) -> dict:
    import unlearn.resolvers  # noqa: F401
    from unlearn.pipeline import run_unlearning

    ov = [f"checkpoint={ckpt}", "eval.probe=false", *overrides]
    return run_unlearning(compose_config(ov, out, shrink=False, config_name="unlearn"), out, ov)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100_named(root)
    return root


@pytest.mark.slow  # 25-45 s on 2 loaded cores: a training run and two unlearning runs
def test_cifar100_preset_trains_and_forgets_the_paper_class_by_name(cifar_dir, tmp_path):
    run = _train("ssd_cifar100_resnet18", cifar_dir, tmp_path / "train")
    r = _unlearn(run, tmp_path / "ssd", "forget.classes=[rocket]")
    assert r["forget_classes"] == [69] and r["sizes"]["forget_train"] == 2 and r["sizes"]["forget_test"] == 1
    assert r["method_info"]["alpha"] == 10.0 and r["method_info"]["order"] == "reference"  # ResNet full-class
    assert r["sizes"]["retain_train"] == 198
    with pytest.raises(ValueError, match="rockett.*did you mean \\['rocket'\\]"):
        _unlearn(run, tmp_path / "bad", "forget.classes=[rockett]")


@pytest.mark.slow  # 20-40 s: a training run and two unlearning runs
def test_cifar20_preset_subclass_and_superclass_forgetting(cifar_dir, tmp_path):
    run = _train("ssd_cifar20", cifar_dir, tmp_path / "train")
    from unlearn.context import load_context

    src = load_context(str(run)).stream.source
    assert len(src.classes) == 20 and src.classes[19] == "vehicles_2" and src.train.fine_classes[69] == "rocket"
    sub = _unlearn(run, tmp_path / "sub", "forget=subclass", "forget.fine_class=rocket")
    assert sub["forget_classes"] == [] and sub["sizes"]["forget_train"] == 2 and sub["sizes"]["forget_test"] == 1
    assert sub["method_info"]["alpha"] == 10.0  # ResNet sub-class
    split = (tmp_path / "sub" / "splits" / "forget_train.csv").read_text().splitlines()[1:]
    assert {int(line.split(",")[2]) for line in split} == {19}  # labelled with the super-class the model predicts
    retain = (tmp_path / "sub" / "splits" / "retain_train.csv").read_text().splitlines()[1:]
    assert sum(int(line.split(",")[2]) == 19 for line in retain) == 2 * len(SIBLINGS_OF_ROCKET)  # siblings stay
    full = _unlearn(run, tmp_path / "full", "forget.classes=[vehicles_2]")
    assert full["forget_classes"] == [19] and full["sizes"]["forget_train"] == 2 * (1 + len(SIBLINGS_OF_ROCKET))
    assert math.isfinite(full["retain_test_acc"])
