"""Which training samples each step sees: plain shuffling or rare-genre resampling, sharded
across DDP ranks.

Rare-genre resampling (the original project's "further work"): a poster's weight is the
largest, over its genres, of (1 / genre frequency) ** power, so a poster of a rare genre is
drawn more often. power 0 is uniform sampling; 1 roughly balances the genres.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


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
    """Like `DistributedSampler`, with optional sampling weights.

    Each epoch draws one global order from a generator seeded by (seed, epoch): a permutation,
    or `len(weights)` draws with replacement. The order is padded to a multiple of `world` and
    rank r takes every world-th index from r. So with a per-rank batch of b, the ranks' step-s
    batches together are exactly the global order's s-th batch of b * world, the batch a
    single process would see: DDP and one process train on the same data.
    """

    def __init__(self, n: int, weights: np.ndarray | None = None, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0
        self.per_rank = -(-n // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """The global order of this epoch (before sharding)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        pad = self.per_rank * self.world - self.n
        return torch.cat([order, order[:pad]]) if pad else order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank
