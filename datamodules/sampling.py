"""Samplers whose order is a pure function of (seed, epoch), sharded over DDP ranks, resumable mid-epoch.

Lightning calls ``set_epoch`` on the sampler at every epoch start, so a run resumed from a
checkpoint sees exactly the batches an uninterrupted run would have seen — the default
``RandomSampler`` draws its order from the global RNG, which a restart does not restore.

The samplers subclass :class:`~torch.utils.data.DistributedSampler` so that Lightning keeps them
under DDP instead of wrapping them in a second distributed sampler: each rank takes its own
shard of the same per-epoch order (:func:`shard_indices`). A run preempted in the middle of an
epoch (:mod:`sciadapt.stages.preempt`) resumes by skipping the samples this rank had already
trained on in that epoch (:meth:`ShardedEpochSampler.resume_at`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from sciadapt.types import DataModule


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of ``range(n)`` that depends on ``seed`` and ``epoch`` only."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _dist_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def shard_indices(n: int, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool) -> list[int]:
    """The sample positions one rank reads in one epoch.

    Every rank draws the same order of ``range(n)`` (:func:`epoch_permutation` when shuffling,
    time order otherwise), pads it by repeating its head until ``world_size`` divides it (DDP
    needs equal counts) and takes every ``world_size``-th entry from ``rank``. So the shards are
    disjoint and cover ``range(n)``, except for the ``(-n) % world_size`` padded repeats.

    Args:
        n: Number of samples.
        epoch: Epoch number.
        seed: Shuffle seed.
        rank: This process's rank, ``0 <= rank < world_size``.
        world_size: Number of ranks.
        shuffle: Permute (train) or keep the order (evaluation).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    if n == 0:
        return []
    order = epoch_permutation(n, seed, epoch) if shuffle else list(range(n))
    total = math.ceil(n / world_size) * world_size
    while len(order) < total:
        order += order[: total - len(order)]
    return order[rank:total:world_size]


class ShardedEpochSampler(DistributedSampler):
    """Per-epoch deterministic order, sharded over DDP ranks (see :func:`shard_indices`).

    Its ``__init__`` does not need an initialised process group (rank and world size come from
    ``torch.distributed`` when it is). :meth:`positions` is the hook for samplers that map the
    order to other indices (the raster chip sampler draws new chips every epoch).

    Args:
        n: Number of samples.
        seed: Shuffle seed.
        shuffle: Permute per epoch (train) or keep the order (evaluation).
        num_replicas / rank: Override the world size / rank (tests).
    """

    def __init__(
        self, n: int, seed: int = 0, shuffle: bool = True, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        world, me = _dist_world()
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = world if num_replicas is None else num_replicas
        self.rank = me if rank is None else rank
        self.epoch = 0
        self.drop_last = False
        self.num_samples = math.ceil(n / self.num_replicas) if n else 0
        self.total_size = self.num_samples * self.num_replicas
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, n_done: int) -> None:
        """Make the pass over ``epoch`` start after the first ``n_done`` samples of this rank's shard.

        Applies once: the next epoch is whole again. ``len()`` keeps counting the whole shard, so
        Lightning's progress counters (restored from the checkpoint) stay consistent with it.
        """
        self._resume = (int(epoch), int(n_done))

    def positions(self, shard: list[int]) -> list[int]:
        """The dataset indices of this rank's shard (identity here)."""
        return shard

    def __iter__(self) -> Iterator[int]:
        shard = shard_indices(self.n, self.epoch, self.seed, self.rank, self.num_replicas, self.shuffle)
        if self._resume is not None and self._resume[0] == self.epoch:
            shard = shard[self._resume[1] :]
            self._resume = None
        return iter(self.positions(shard))

    def __len__(self) -> int:
        return self.num_samples


class EpochShuffleSampler(ShardedEpochSampler):
    """A fresh permutation of ``range(n)`` each epoch, seeded by ``seed`` and the epoch, sharded under DDP."""

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__(n, seed=seed, shuffle=True)


def apply_resume(sampler: ShardedEpochSampler, datamodule: DataModule, batch_size: int) -> ShardedEpochSampler:
    """Hand a datamodule's pending mid-epoch resume point (``train_resume``: epoch, batches done on
    this rank, set by :class:`sciadapt.stages.preempt.PreemptionCheckpoint`) to its new train sampler."""
    pending = datamodule.train_resume
    if pending is not None:
        epoch, batches = pending
        sampler.resume_at(epoch, batches * batch_size)
        datamodule.train_resume = None
    return sampler
