"""The order of training samples as a pure function of (seed, batch index, rank).

Every batch is decided by its index alone: which images (a fresh permutation of the
dataset per pass, split across ranks) and the random seed of each sample's augmentation
and of the batch's masks. A run resumed at batch k therefore sees exactly the batches
an uninterrupted run would have, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Sampler

from manifests.config import ConfigError

Item = tuple[int, int]  # (dataset index, sample seed)


class BatchStream(Sampler[list[Item]]):
    """An endless stream of batches from ``start``, each decided by its index alone."""

    start: int

    def items(self, b: int) -> list[Item]:
        """The (index, seed) pairs of batch ``b`` on this rank."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[Item]]:
        b = self.start
        while True:
            yield self.items(b)
            b += 1

    def __len__(self) -> int:  # an endless stream; DataLoader asks only for progress bars
        return 2**62


class StreamBatchSampler(BatchStream):
    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        if dataset_size < batch_size * world_size:
            raise ConfigError(
                f"{dataset_size} images cannot fill one batch of data.batch_size={batch_size} "
                f"on {world_size} rank(s): set data.batch_size to at most "
                f"{max(dataset_size // world_size, 1)} or train on more images"
            )
        self.n, self.batch, self.seed = dataset_size, batch_size, seed
        self.rank, self.world, self.start = rank, world_size, start_batch
        self.per_pass = dataset_size // (batch_size * world_size)  # full batches per pass

    def _permutation(self, pass_index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
        return torch.randperm(self.n, generator=g)

    def items(self, b: int) -> list[Item]:
        pass_index, within = divmod(b, self.per_pass)
        order = self._permutation(pass_index)
        first = (within * self.world + self.rank) * self.batch
        base = (self.seed << 40) + (b * self.world + self.rank) * self.batch
        return [(int(order[first + j]), base + j) for j in range(self.batch)]


class MixedBatchSampler(BatchStream):
    """Whole batches from several datasets laid end to end: batch b comes from one of
    them, drawn with fixed ``ratios`` by a generator of (seed, b // BLOCK), and is the next
    batch of that dataset's own :class:`StreamBatchSampler`. Every rank draws the same
    dataset for b, and b alone decides the batch, so a resumed run sees the same ones."""

    BLOCK = 65_536  # batches whose sources one draw decides

    def __init__(
        self, sizes: list[int], ratios: list[float], batch_size: int, seed: int, rank: int = 0,
        world_size: int = 1, start_batch: int = 0,
    ) -> None:  # fmt: skip
        self.streams = [StreamBatchSampler(n, batch_size, seed + 7_919 * s, rank, world_size)
                        for s, n in enumerate(sizes)]  # fmt: skip
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.p = np.asarray(ratios, np.float64) / np.sum(ratios)
        self.seed, self.start = seed, start_batch
        self._drawn = lru_cache(maxsize=2)(self._draw_block)
        self._before = [np.zeros(len(self.p), np.int64)]  # batches of each dataset before block j

    def _draw_block(self, block: int) -> np.ndarray:
        return np.random.default_rng([self.seed, block]).choice(len(self.p), self.BLOCK, p=self.p)

    def source(self, b: int) -> tuple[int, int]:
        """(dataset, its own batch index) of batch ``b``."""
        block, within = divmod(b, self.BLOCK)
        while len(self._before) <= block:
            counts = np.bincount(self._draw_block(len(self._before) - 1), minlength=len(self.p))
            self._before.append(self._before[-1] + counts)
        drawn = self._drawn(block)
        s = int(drawn[within])
        return s, int(self._before[block][s]) + int(np.count_nonzero(drawn[:within] == s))

    def items(self, b: int) -> list[Item]:
        s, own = self.source(b)
        return [(int(self.offsets[s]) + index, seed) for index, seed in self.streams[s].items(own)]
