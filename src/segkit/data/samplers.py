"""Samplers that make data order and augmentation a pure function of (seed, epoch, index).

``SeededSampler`` yields ``(index, sample_seed)`` pairs; the dataset wrapper seeds the augmentation of
that sample with ``sample_seed``. A run resumed from a checkpoint, or spread over processes, therefore
sees exactly the crops and flips an uninterrupted run would have seen, whatever the worker count.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Dataset, DistributedSampler


class SeededSampler(DistributedSampler):
    """A shuffling (distributed) sampler whose order depends on ``seed`` and the epoch only."""

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in super().__iter__():
            yield index, int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation sampler: rank r takes samples r, r+W, ...; no sample is repeated to even out ranks,
    so metrics computed over processes equal the single-process ones."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
