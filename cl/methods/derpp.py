"""Dark Experience Replay++ (DER++; Buzzega, Boschini, Porrello, Abati, Calderara, NeurIPS 2020), as in Mammoth.

    L = CE( mask(f(x)), y ) + alpha * || f(x') - z' ||_2^2  + beta * CE( mask(f(x'')), y'' )

with (x', z') and (x'', y'') two independent replay batches from a reservoir buffer that stores, for each item, the
logits z the model produced when the item entered the buffer (the stream batch's logits of the step that offered it,
before that step's update, as Mammoth's ``outputs.data``). The MSE is over all logits, unmasked (as DER). Defaults
alpha = 0.1, beta = 0.5 are Mammoth's Seq-CIFAR-10 values for a 200-item buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cl.methods.er import ER


class DERPP(ER):
    """DER++: ER's reservoir with stored logits, a logit-matching term (alpha) and a replay CE term (beta)."""

    def __init__(self, *args: Any, alpha: float = 0.1, beta: float = 0.5, **kwargs: Any) -> None:
        kwargs["store_logits"] = True
        super().__init__(*args, **kwargs)
        if alpha < 0 or beta < 0:
            raise ValueError(f"method.alpha={alpha}, method.beta={beta}; both must be >= 0")
        self.alpha, self.beta = float(alpha), float(beta)

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        mask = self.train_logit_mask()
        logits = self(x)
        self._stream_logits = logits.detach()
        loss = F.cross_entropy(self.apply_mask(logits, mask), y)
        if self.alpha > 0 and (r := self.replay()) is not None:
            loss = loss + self.alpha * F.mse_loss(self(r.x.to(x)), r.logits.to(logits))
        if self.beta > 0 and (r := self.replay()) is not None:
            loss = loss + self.beta * F.cross_entropy(self.apply_mask(self(r.x.to(x)), mask), r.y.to(y))
        return loss
