"""Experience Replay with a reservoir buffer (ER; Chaudhry et al., "On Tiny Episodic Memories in Continual Learning",
2019; Riemer et al., ICLR 2019), in the form of the Mammoth benchmark suite used by FPF (Zhao et al., ICML 2023).

Each training step draws ``replay_batch_size`` items (x', y') from the buffer and minimises one cross-entropy over the
concatenation of the stream batch and the replay batch:

    L = CE( mask(f([x; x'])), [y; y'] )

After the step the stream batch is offered to the reservoir (:class:`cl.modules.buffer.ReservoirBuffer`). Design
choices: the batch is stored as the loader delivered it (after any augmentation of the source; Mammoth stores the
non-augmented images); the training mask is the base class's (classes seen so far), which covers the replayed classes
in class- and domain-incremental scenarios; task-incremental replay (per-item task masks) is not supported.

DDP (``trainer=ddp``/``ddp_cpu``): ``replay_batch_size`` is global like ``data.batch_size``; each rank replays its
share of the 1-process draw and the buffer is filled with the gathered global batch in 1-process order, so a W-process
run follows the 1-process run (``tests/engine/test_ddp_gloo.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl.methods.base import ContinualMethod
from cl.modules.buffer import ReservoirBuffer


class ER(ContinualMethod):
    """Experience Replay: CE on the stream batch concatenated with a reservoir replay batch."""

    SCENARIOS: ClassVar[tuple[str, ...]] = ("class", "domain")

    def __init__(
        self,
        *args: Any,
        buffer_size: int = 200,
        input_shape: Sequence[int] = (1, 16, 16),
        replay_batch_size: int = 32,
        buffer_seed: int = 0,
        store_logits: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if int(replay_batch_size) < 1:
            raise ValueError(f"method.replay_batch_size={replay_batch_size}; must be a positive integer")
        self.replay_batch_size = int(replay_batch_size)
        num_logits = self.num_classes if store_logits else 0
        self.buffer = ReservoirBuffer(buffer_size, input_shape, num_logits=num_logits, seed=buffer_seed)
        self._stream_logits: torch.Tensor | None = None

    def replay(self, n: int | None = None) -> Any:
        """A replay batch of ``min(n, buffer items)`` distinct items (Mammoth shrinks the request, never repeats an
        item), or ``None`` while the buffer is empty. Under DDP, this rank's share of the 1-process draw
        (:meth:`ReservoirBuffer.sample` with ``shard=True``): the ranks together replay the 1-process batch."""
        if self.buffer.is_empty():
            return None
        r = self.buffer.sample(n or self.replay_batch_size, shard=True)
        return r if len(r.y) else None

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        r = self.replay()
        if r is None:
            logits = self(x)
            self._stream_logits = logits.detach()
            return F.cross_entropy(self.apply_mask(logits, self.train_logit_mask()), y)
        logits = self(torch.cat([x, r.x.to(x)]))
        self._stream_logits = logits[: len(y)].detach()
        return F.cross_entropy(self.apply_mask(logits, self.train_logit_mask()), torch.cat([y, r.y.to(y)]))

    def on_train_batch_end(self, outputs: Any, batch: Sequence[Any], batch_idx: int) -> None:
        logits = self._stream_logits if self.buffer.stores_logits else None
        self.buffer.add(batch[0].detach(), batch[1].detach(), self.experience_index, logits)
        self._stream_logits = None

    def report_metrics(self) -> dict[str, Any]:
        return {"buffer_size": self.buffer.capacity, "buffer_seen": int(self.buffer.num_seen)}
