"""Joint training, the upper bound: at experience t the model is trained on the union of the training data of
experiences 0..t (all data seen so far), so nothing is forgotten except through limited capacity or epochs."""

from __future__ import annotations

from torch.utils.data import ConcatDataset, Dataset

from cl.data.stream import Experience, Stream
from cl.methods.base import ContinualMethod


class Joint(ContinualMethod):
    """Joint training on every experience seen so far (upper bound)."""

    def train_dataset(self, experience: Experience, stream: Stream) -> Dataset:
        return ConcatDataset([e.train for e in stream.experiences[: experience.index + 1]])
