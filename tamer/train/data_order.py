"""Data order that depends only on (seed, epoch, position), so a resumed run sees exactly the batches it would have.

The sampler yields ``(epoch, index)`` pairs; :class:`SeededItems` uses them to seed each item's random augmentation,
which makes crops and flips independent of worker count and of where the run was interrupted.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class ResumableSampler(Sampler):
    """A shuffled, rank-sharded epoch (like ``DistributedSampler`` with ``drop_last``) that can start mid-epoch."""

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if length < world_size:
            raise ValueError(f"dataset has {length} items, fewer than the {world_size} processes")
        self.length, self.seed, self.rank, self.world_size, self.shuffle = length, seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        """Begin ``epoch`` at its ``start``-th item (of this rank's share)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.length // self.world_size - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        share = order[self.rank: self.length // self.world_size * self.world_size: self.world_size]
        for index in share[self.start:].tolist():
            yield self.epoch, index


class SeededItems(Dataset):
    """Wraps a dataset so that item ``i`` of epoch ``e`` draws its augmentation from a seed of (seed, e, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        # Only the CPU generator, which augmentations draw from: torch.manual_seed would also queue a seed for
        # every CUDA device and record a stack trace doing it (a tenth of a tiny transformer's step on a CPU).
        generator = torch.default_generator
        state = generator.get_state()
        try:
            generator.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.dataset[index]
        finally:
            generator.set_state(state)
