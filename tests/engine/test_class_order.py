"""The CODA-Prompt reference's class order (trainer.py) and the paper presets that use it, seeds 0-4."""

from __future__ import annotations

import random

import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import TensorDataset

from cl.data.class_order import coda_reference_order
from cl.data.sources.base import SplitDatasets
from cl.data.stream import build_stream

# First 12 classes of the reference's CIFAR-100 order for repeats 0-4, as printed by its trainer.py ("post-shuffle:")
# under CPython's Mersenne Twister (random.seed(s); random.shuffle(list(range(100)))).
CIFAR100_HEAD = {
    0: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    1: [53, 37, 65, 51, 4, 20, 38, 9, 10, 81, 44, 36],
    2: [0, 76, 61, 63, 1, 71, 2, 6, 16, 19, 13, 24],
    3: [35, 41, 45, 4, 76, 12, 0, 64, 42, 11, 81, 39],
    4: [73, 86, 82, 23, 1, 42, 57, 40, 76, 69, 25, 94],
}
PRESETS = [f"{m}_{d}" for m in ("coda", "l2p", "dualprompt") for d in ("cifar100", "imagenet_r", "domainnet")]
N_CLASSES = {"cifar100": 100, "imagenet_r": 200, "domainnet": 345}


def reference_tasks(num_classes: int, seed: int, split: int) -> list[list[int]]:
    """The reference's own steps (trainer.py, Trainer.__init__ with rand_split=True and equal splits), on the global
    ``random`` module as it runs them."""
    class_order = list(range(num_classes))
    if seed > 0:
        random.seed(seed)
        random.shuffle(class_order)
    return [class_order[p : p + split] for p in range(0, num_classes, split)]


@pytest.mark.parametrize("seed", range(5))
def test_order_is_the_references_for_each_repeat(seed):
    order = coda_reference_order(100, seed)
    assert order[:12] == CIFAR100_HEAD[seed]
    assert order == [c for task in reference_tasks(100, seed, 10) for c in task]
    state = random.getstate()
    coda_reference_order(100, seed)
    assert random.getstate() == state  # the global RNG is left alone


def _fake_source(n_classes: int) -> SplitDatasets:
    y = torch.arange(n_classes)
    train, test = TensorDataset(torch.zeros(n_classes, 1, 2, 2), y), TensorDataset(torch.zeros(n_classes, 1, 2, 2), y)
    train.targets = test.targets = y.tolist()
    return SplitDatasets(train, test, [str(c) for c in range(n_classes)])


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_presets_use_the_reference_order_for_each_seed(make_cfg, tmp_path, preset):
    n = N_CLASSES[preset.split("_", 1)[1]]
    source = _fake_source(n)
    for seed in range(5):
        cfg = make_cfg(f"experiment={preset}", f"seed={seed}", f"paths.data_dir={tmp_path}", shrink=False)
        stream = instantiate(cfg.scenario, _partial_=True)(datasets=source)
        split = n // cfg.scenario.n_experiences
        assert [sorted(e.classes) for e in stream.experiences] == [sorted(t) for t in reference_tasks(n, seed, split)]
        assert stream.class_order == coda_reference_order(n, seed)
    assert cfg.backbone.name == "vit_base_patch16_224.augreg_in21k_ft_in1k"


def test_vit_b16_is_the_augreg_checkpoint_the_reference_loads():
    """The reference (timm 0.4.12 ``vit_base_patch16_224``) loads this AugReg in21k->in1k file; so must the preset."""
    from omegaconf import OmegaConf
    from timm.models import get_pretrained_cfg

    from tests.helpers import CONF_DIR

    name = OmegaConf.load(CONF_DIR / "backbone" / "vit_b16.yaml").name
    url = get_pretrained_cfg(name).url  # offline: timm's registry
    assert url.endswith(
        "augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz"
    )


def test_rule_and_seed_are_checked():
    source = _fake_source(10)
    with pytest.raises(ValueError, match=r"class_order_rule='coda'; allowed: \['avalanche', 'coda_reference'\]"):
        build_stream(source, "class", 5, class_order_rule="coda")
    with pytest.raises(ValueError, match=r"scenario.class_order_seed=-1"):
        build_stream(source, "class", 5, class_order_seed=-1, class_order_rule="coda_reference")
    explicit = list(range(9, -1, -1))
    assert build_stream(source, "class", 5, class_order=explicit, class_order_rule="coda_reference").class_order == (
        explicit
    )
