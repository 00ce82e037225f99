"""The order of training samples as a pure function of (seed, batch index, rank).

Every batch is decided by its index alone: which images (a fresh permutation of the
dataset per pass, split across ranks) and the random seed of each sample's augmentation
and of the batch's masks. A run resumed at batch k therefore sees exactly the batches
an uninterrupted run would have, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from manifests.config import ConfigError

Item = tuple[int, int]  # (dataset index, sample seed)


class StreamBatchSampler(Sampler[list[Item]]):
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
        """The (index, seed) pairs of batch ``b`` on this rank."""
        pass_index, within = divmod(b, self.per_pass)
        order = self._permutation(pass_index)
        first = (within * self.world + self.rank) * self.batch
        base = (self.seed << 40) + (b * self.world + self.rank) * self.batch
        return [(int(order[first + j]), base + j) for j in range(self.batch)]

    def __iter__(self) -> Iterator[list[Item]]:
        b = self.start
        while True:
            yield self.items(b)
            b += 1

    def __len__(self) -> int:  # an endless stream; DataLoader asks only for progress bars
        return 2**62
