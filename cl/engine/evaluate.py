"""Evaluation of a method on every experience's test set: one row of the accuracy matrix.

Task-agnostic accuracy masks the logits to the classes seen so far (all classes before any training); task-aware
accuracy masks them to the evaluated experience's own classes (the task id is given). In a domain-incremental stream
every experience holds all classes, so both coincide. Under torch.distributed each rank evaluates the samples
``rank::world_size`` (no padding, no duplicates) and the correct/total counts are summed across ranks, so the result
equals a single-process evaluation exactly.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from cl.data.stream import Stream


def _shard(dataset: Dataset) -> Dataset:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return Subset(dataset, list(range(rank, len(dataset), world)))
    return dataset


@torch.no_grad()
def evaluate_stream(
    method: torch.nn.Module, stream: Stream, batch_size: int, device: torch.device | str, num_workers: int = 0
) -> tuple[list[float], list[float]]:
    """Return (task-agnostic row, task-aware row) of accuracies in [0, 1], one entry per experience."""
    was_training = method.training
    method.eval()
    method.to(device)
    seen = method.seen_classes.clone()
    if not bool(seen.any()):
        seen = torch.ones_like(seen)
    counts = torch.zeros(len(stream), 3, dtype=torch.float64, device=device)  # correct_tag, correct_taw, total
    for j, exp in enumerate(stream.experiences):
        task_mask = torch.zeros_like(seen)
        task_mask[torch.tensor(exp.classes, device=seen.device)] = True
        loader = DataLoader(_shard(exp.test), batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for batch in loader:
            x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            logits = method.eval_logits(x)
            counts[j, 0] += (method.apply_mask(logits, seen).argmax(1) == y).sum()
            counts[j, 1] += (method.apply_mask(logits, task_mask).argmax(1) == y).sum()
            counts[j, 2] += len(y)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    method.train(was_training)
    total = counts[:, 2].clamp(min=1)
    return (counts[:, 0] / total).tolist(), (counts[:, 1] / total).tolist()
