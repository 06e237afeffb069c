"""A many-class offline dataset for SSD's native setting: scikit-learn's digits (10 real handwritten classes, the
fixed split of ``cl.data.digits``) plus ``n_letters`` synthetic letter classes rendered like the optdigits images
(``cl.modules.prompt_pretrain.render_letters``: the fonts that ship with matplotlib, random affine jitter and stroke
width, 32x32 bitmap counted in 4x4 blocks to 8x8 values 0..16, resized bilinear like the digits). Classes 0-9 are the
digits, 10.. the letters (``LETTERS`` order), each letter with ``train_per_class`` / ``test_per_class`` images (default
135 / 45, the digits' own split sizes), train and test rendered with different seeds. Nothing is downloaded.

Why: with 10 classes each class is ~10 % of the training data, so SSD's ratio ``I_f / I_D`` is capped near 10;
the paper's CIFAR-100 caps it near 100 (experiments/unlearn_native/README.md, "Why SSD fails here"). The digits are
the same images and split as in the 10-class study, so the forgotten classes 0-9 compare one to one.

    python -m cl.run ~experiment method=finetune backbone=cnn_small scenario.n_experiences=1 trainer.max_epochs=10 \
        data.name=digits_letters data.source._target_=experiments.unlearn_native.manyclass.load_digits_letters
"""

from __future__ import annotations

import torch

from cl.data.digits import LabelledTensorDataset, load_digits
from cl.data.sources import SplitDatasets


def load_digits_letters(
    image_size: int = 8,
    channels: int = 1,
    mean: float = 0.0,
    std: float = 1.0,
    augment: bool = False,
    n_letters: int = 38,
    train_per_class: int = 135,
    test_per_class: int = 45,
    seed: int = 0,
) -> SplitDatasets:
    """Digits (classes 0-9) + ``n_letters`` rendered letters (classes 10..), see the module docstring."""
    from cl.modules.prompt_pretrain import LETTERS, render_letters

    if not 0 <= n_letters <= len(LETTERS):
        raise ValueError(f"data.source.n_letters={n_letters}; allowed: 0 .. {len(LETTERS)}")
    if augment:
        raise ValueError("data.source.augment=true is not supported by digits_letters; allowed: false")
    digits = load_digits(image_size, channels, mean, std, augment=False)

    def letters(per_class: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = render_letters(per_class, image_size, split_seed)
        keep = y < n_letters
        x = ((x[keep] - mean) / std).expand(-1, channels, -1, -1).contiguous()
        return x, y[keep] + 10

    def join(part: LabelledTensorDataset, extra: tuple[torch.Tensor, torch.Tensor]) -> LabelledTensorDataset:
        return LabelledTensorDataset(torch.cat([part.images, extra[0]]), torch.cat([part.labels, extra[1]]))

    return SplitDatasets(
        train=join(digits.train, letters(train_per_class, 2 * seed + 1000)),
        test=join(digits.test, letters(test_per_class, 2 * seed + 1001)),
        classes=[str(c) for c in range(10)] + list(LETTERS[:n_letters]),
    )
