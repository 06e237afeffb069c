"""Fine-tuning: plain SGD on each experience in turn, the lower bound of continual learning (no mechanism against
forgetting). Everything it does is the base class's: cross-entropy on the masked logits."""

from __future__ import annotations

from cl.methods.base import ContinualMethod


class Finetune(ContinualMethod):
    """Sequential fine-tuning (lower bound)."""

    step_flops_by_batch = True  # a step's FLOPs follow from its batch's shapes (cl/methods/base.py)
