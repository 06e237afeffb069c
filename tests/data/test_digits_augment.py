"""``data.source.augment`` of the digits: random translation of the training images only, by up to image_size // 8."""

import pytest
import torch

from cl.data.digits import load_digits, random_shift


def test_random_shift_translates_within_the_padding_and_fills_the_background():
    image = torch.arange(1.0, 17.0).reshape(1, 4, 4)
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        out = random_shift(image, 1, fill=-1.0)
        assert out.shape == image.shape
        # find the offset: the output is the input moved by (dy, dx) in [-1, 1]^2, the uncovered border = fill
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(
                out, torch.nn.functional.pad(image, (1, 1, 1, 1), value=-1.0)[:, 1 + dy : 5 + dy, 1 + dx : 5 + dx]
            )
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 9  # every offset is drawn


def test_augment_changes_training_images_only_and_keeps_the_pixels():
    plain = load_digits(image_size=16)
    aug = load_digits(image_size=16, augment=True)
    torch.manual_seed(0)
    moved = [not torch.equal(aug.train[i][0], plain.train[i][0]) for i in range(50)]
    assert 30 < sum(moved) < 50  # 8 of 9 offsets move the image
    for i in range(50):
        img, label = aug.train[i]
        assert label == plain.train[i][1] and img.shape == (1, 16, 16)
        assert img.sum() <= plain.train[i][0].sum() + 1e-5  # a translation only drops (background) pixels
    assert all(torch.equal(aug.test[i][0], plain.test[i][0]) for i in range(50))
    assert all(torch.equal(plain.train[i][0], plain.train[i][0]) for i in range(5))  # default: no augmentation


def test_augment_must_be_a_bool():
    with pytest.raises(ValueError, match="data.source.augment"):
        load_digits(image_size=8, augment="yes")
