"""Fine-tuning: plain SGD on each experience in turn, the lower bound of continual learning (no mechanism against
forgetting). Everything it does is the base class's: cross-entropy on the masked logits."""

from __future__ import annotations

from cl.methods.base import ContinualMethod


class Finetune(ContinualMethod):
    """Sequential fine-tuning (lower bound)."""
