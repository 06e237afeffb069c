"""build_transforms (CODA-Prompt's dataloaders/utils.py rules) and the SplitDatasets / error contracts."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

from cl.data.sources import DatasetNotFoundError, SplitDatasets, build_transforms


def _kinds(tf) -> list[str]:
    return [type(t).__name__ for t in tf.transforms]


def test_variable_size_images_follow_coda_prompt() -> None:
    train, test = build_transforms(224, augment=True, native_size=None)
    assert _kinds(train) == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert _kinds(test) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert test.transforms[0].size == 256  # CODA-Prompt: Resize(256) + CenterCrop(224)
    out = test(Image.new("RGB", (300, 200), color=(255, 0, 0)))
    assert out.shape == (3, 224, 224) and out[0].min() == 1.0 and out[1].max() == 0.0


def test_native_32px_uses_padded_random_crop() -> None:
    train, test = build_transforms(32, augment=True, native_size=32)
    assert _kinds(train)[:2] == ["RandomCrop", "RandomHorizontalFlip"] and train.transforms[0].padding == 4
    assert test(Image.new("RGB", (32, 32))).shape == (3, 32, 32)
    upscaled, _ = build_transforms(224, augment=True, native_size=32)
    assert _kinds(upscaled)[0] == "RandomResizedCrop"


def test_no_augment_train_equals_test_and_normalisation() -> None:
    train, test = build_transforms(8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), augment=False, native_size=8)
    img = Image.new("RGB", (8, 8), color=(255, 255, 255))
    a, b = train(img), test(img)
    assert torch.equal(a, b)
    assert torch.allclose(a[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))  # (1 - 0.5) / std


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"image_size": -3}, "data.image_size=-3"),
        ({"image_size": 32, "mean": (0.5,)}, "data.mean"),
        ({"image_size": 32, "std": (1.0, 0.0, 1.0)}, "data.std"),
    ],
)
def test_bad_arguments(kwargs, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        build_transforms(**kwargs)


class _Targets:
    def __init__(self, targets):
        self.targets = targets


def test_split_datasets_checks_labels_against_classes() -> None:
    SplitDatasets(_Targets([0, 2]), _Targets([1]), ["a", "b", "c"], coarse_train=[0, 0], coarse_test=[1])
    with pytest.raises(ValueError, match="only 2 class names"):
        SplitDatasets(_Targets([0, 2]), _Targets([1]), ["a", "b"])
    with pytest.raises(ValueError, match="coarse_test"):
        SplitDatasets(_Targets([0]), _Targets([1]), ["a", "b"], coarse_train=[0], coarse_test=[])


def test_error_message_and_pickling() -> None:
    err = DatasetNotFoundError("cifar100", "/data/cifar-100-python", "set data.download=true", "Missing 'meta'.")
    assert isinstance(err, FileNotFoundError)
    assert "data=cifar100" in str(err) and "/data/cifar-100-python" in str(err) and "data.download=true" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert again.path == err.path and again.key == "cifar100" and str(again) == str(err)
