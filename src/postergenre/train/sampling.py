"""Which training samples each step sees, in every training mode: one `EpochSampler` draws
each epoch's order (plain shuffling or rare-genre resampling) from one seed formula
(`epoch_seed`) and shards it across DDP ranks.

Rare-genre resampling (the original project's "further work"): a poster's weight is the
largest, over its genres, of (1 / genre frequency) ** power, so a poster of a rare genre is
drawn more often. power 0 is uniform sampling; 1 roughly balances the genres.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """The seed of an epoch's random draws: salt 0 the data (order, then augmentation or
    mirroring), 2 + rank the engine's dropout and drop-connect on that rank."""
    return (seed * 1_000_003 + epoch * 10_007 + salt) % (2**63)


def rare_genre_weights(labels: np.ndarray, power: float = 0.5) -> np.ndarray:
    """(n,) sampling weights, mean 1. Posters without a genre get the smallest genre weight."""
    labels = np.asarray(labels, dtype=np.float64) > 0
    freq = labels.mean(axis=0)
    genre_w = np.where(freq > 0, np.maximum(freq, 1e-12) ** -power, 0.0)
    floor = genre_w[freq > 0].min() if (freq > 0).any() else 1.0
    w = np.where(labels, genre_w, 0.0).max(axis=1, initial=0.0)
    w = np.where(labels.any(axis=1), w, floor)
    return w / w.mean()


class EpochSampler(Sampler[int]):
    """Like `DistributedSampler`, with optional rare-genre resampling: the one sampler of
    every training mode (train/sources.py).

    Each epoch draws one global order from a generator seeded by `epoch_seed(seed, epoch)`: a
    permutation, or `n` draws with replacement when `resample` > 0 (weights from `labels`,
    `rare_genre_weights`). The order is padded to a multiple of `world` and rank r takes
    every world-th index from r. So with a per-rank batch of b, the ranks' step-s batches
    together are exactly the global order's s-th batch of b * world, the batch a single
    process would see: DDP and one process train on the same data. `draw` also hands back the
    generator, so a mode's per-poster draws (augmentation, mirroring) follow from the same seed.
    """

    def __init__(self, n: int, labels: np.ndarray | None = None, resample: float = 0.0,
                 seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.weights = None
        if resample > 0:
            if labels is None or len(labels) != n:
                raise ValueError("resampling needs the labels of all n samples")
            self.weights = torch.as_tensor(rare_genre_weights(labels, resample),
                                           dtype=torch.double)
        self.epoch = 0
        self.per_rank = -(-n // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self, epoch: int) -> tuple[np.ndarray, torch.Generator]:
        """This epoch's global order (before sharding) and the generator that drew it."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        pad = self.per_rank * self.world - self.n
        return torch.cat([order, order[:pad]]).numpy() if pad else order.numpy(), g

    def shard(self, values: Any) -> Any:
        """This rank's share of a global per-epoch array or tensor (the order, per-poster
        draws)."""
        return values[self.rank :: self.world]

    def batches(self, batch_size: int) -> Iterator[slice]:
        """Slices of this rank's shard, one per step, for a global batch of `batch_size`."""
        local = batch_size // self.world
        for start in range(0, self.per_rank, local):
            yield slice(start, start + local)

    def steps(self, batch_size: int) -> int:
        local = batch_size // self.world
        return -(-self.per_rank // local)

    def order(self) -> np.ndarray:
        """The global order of the epoch set by `set_epoch`."""
        return self.draw(self.epoch)[0]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard(self.order()).tolist())

    def __len__(self) -> int:
        return self.per_rank
