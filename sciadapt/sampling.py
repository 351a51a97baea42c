"""Samplers whose order is a pure function of (seed, epoch).

Lightning calls ``set_epoch`` on the sampler at every epoch start, so a run resumed from an
epoch-end checkpoint sees exactly the batches an uninterrupted run would have seen — the
default ``RandomSampler`` draws its order from the global RNG, which a restart does not restore.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation of ``range(n)`` each epoch, seeded by ``seed`` and the epoch."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
