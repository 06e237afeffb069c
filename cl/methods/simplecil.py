"""SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and
Adaptivity are All You Need", IJCV 2024, arXiv 2303.07338, sec. 4; reference code zhoudw-zdw/RevisitingCIL
``models/simplecil.py`` with ``utils/inc_net.py`` ``SimpleVitNet`` / ``CosineLinear``): what a frozen pre-trained
backbone gives with no training at all.

After experience t, for each class c of the experience, the prototype is the mean embedding of its training samples,
``p_c = (1/n_c) sum_{i: y_i = c} phi(x_i)`` (eq. 5; ``phi`` = the frozen backbone's pooled feature, the ViT's CLS
token after the final norm), written into row c of the classifier. Prediction is the cosine classifier of the reference
``CosineLinear``: ``logit_c(x) = sigma * cos(phi(x), p_c)`` (``sigma`` only scales: 1, as the reference's initial
value, which SimpleCIL never trains). Prototypes of past classes never change, so nothing is forgotten through the
classifier; all the error is the backbone's.

As the reference, the prototypes are computed on the experience's training set with evaluation-mode data (no
augmentation, no shuffle: the engine's evaluation loader) in ``on_experience_end``; nothing is optimised, so the engine
runs no Lightning ``fit`` (no trainable parameter). The forward passes of that pass are its training FLOPs
(``extra_train_flops``, counted by the same formulas as the FLOP counter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cl.data.stream import Experience
from cl.methods.base import ContinualMethod


class SimpleCIL(ContinualMethod):
    """Prototype (class-mean embedding) cosine classifier on a frozen backbone; trains nothing."""

    def __init__(self, *args: Any, sigma: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not sigma > 0:
            raise ValueError(f"method.sigma={sigma}; allowed: a float > 0 (the cosine classifier's scale)")
        self.sigma = float(sigma)
        self.backbone.requires_grad_(False)
        self.head.requires_grad_(False)
        with torch.no_grad():
            self.head.weight.zero_()  # a class's row is its prototype once the class has been seen
            self.head.bias.zero_()  # unused: the cosine classifier has no bias
        self.register_buffer("prototype_flops", torch.zeros((), dtype=torch.int64))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``sigma * cos(phi(x), p_c)`` for every class c (0 for classes with no prototype yet)."""
        return self.sigma * F.linear(F.normalize(self.features(x), dim=1), F.normalize(self.head.weight, dim=1))

    @torch.no_grad()
    def class_means(self, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of embeddings per class (C, D), samples per class (C,)) over ``loader``'s batches ``(x, y, ...)``."""
        from cl.analysis.flops import LightFlopCounter

        device = self.head.weight.device
        sums = torch.zeros_like(self.head.weight, dtype=torch.float64)
        counts = torch.zeros(self.num_classes, dtype=torch.float64, device=device)
        with LightFlopCounter() as counter:
            for batch in loader:
                x, y = batch[0].to(device), batch[1].to(device)
                sums.index_add_(0, y, self.features(x).to(sums.dtype))
                counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
        self.prototype_flops += int(counter.total)
        return sums, counts

    def on_experience_end(self, experience: Experience, loader_factory: Callable[[Dataset], Any]) -> None:
        was_training = self.training
        self.eval()  # the frozen backbone's evaluation mode (dropout, BatchNorm statistics), as the reference
        try:
            sums, counts = self.class_means(loader_factory(experience.train))
        finally:
            self.train(was_training)
        classes = torch.tensor(experience.classes, device=sums.device)
        if bool((counts[classes] == 0).any()):
            missing = [c for c in experience.classes if counts[c] == 0]
            raise ValueError(f"simplecil: experience {experience.index} has no training sample of classes {missing}")
        with torch.no_grad():
            self.head.weight[classes] = (sums[classes] / counts[classes, None]).to(self.head.weight.dtype)

    def extra_train_flops(self) -> int:
        """FLOPs of the prototype passes so far (the FLOP counter adds them to ``flops``)."""
        return int(self.prototype_flops)
