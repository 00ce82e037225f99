"""The vectors of an embedding directory that take part in a search, as its shards.

A pool's descriptors never sit in one process: a task reads the shard it works on, and
the driver holds only which rows of each shard take part. A vector's global id is its
position among the rows that take part, in shard order; ids are what sharded search
results and union-find speak.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from manifests.embeddings import EmbeddingStore
from manifests.errors import ManifestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VectorShards:
    """The rows of shard ``shards[i]`` of the embedding directory ``root`` that take part:
    ``masks[i]``, one bit per row of its ``sizes[i]`` (packed: tasks receive the selection
    of every shard, at one bit per vector)."""

    root: str
    shards: tuple[int, ...]
    sizes: tuple[int, ...]
    masks: tuple[np.ndarray, ...]

    @classmethod
    def select(
        cls, root: str, take: Callable[[list[str]], np.ndarray] | None = None
    ) -> tuple[VectorShards, list[str]]:
        """The rows of ``root`` that embedded (ok) and that ``take(ids)`` keeps (default:
        all), and their ids in global-id order. Reads the id files only."""
        store = EmbeddingStore(root)
        if not store.complete():
            raise ManifestError(f"{root}: no complete embedding shards")
        shards, sizes, masks, ids = [], [], [], []
        for index, table in store.ids.iter_shards():
            shard_ids = table.column("id").to_pylist()
            keep = table.column("ok").to_numpy(zero_copy_only=False)
            if take is not None:
                keep = keep & take(shard_ids)
            shards.append(index)
            sizes.append(len(keep))
            masks.append(np.packbits(keep))
            ids += [shard_ids[r] for r in np.flatnonzero(keep)]
        return cls(str(root), tuple(shards), tuple(sizes), tuple(masks)), ids

    def rows(self, position: int) -> np.ndarray:
        """Rows of the shard at ``position`` (in :attr:`shards`) that take part."""
        return np.flatnonzero(np.unpackbits(self.masks[position], count=self.sizes[position]))

    @cached_property
    def starts(self) -> np.ndarray:
        """Global id of each shard's first vector; the last entry is the total."""
        counts = [
            int(np.unpackbits(m, count=s).sum())
            for m, s in zip(self.masks, self.sizes, strict=True)
        ]
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def dim(self) -> int:
        return int(
            np.load(EmbeddingStore(self.root).vectors_path(self.shards[0]), mmap_mode="r").shape[1]
        )

    def ids(self, position: int) -> np.ndarray:
        """Global ids of the vectors of the shard at ``position`` (in :attr:`shards`)."""
        return np.arange(self.starts[position], self.starts[position + 1], dtype=np.int64)

    def read(self, position: int) -> np.ndarray:
        """float32 vectors of the shard at ``position``, the rows that take part."""
        store = EmbeddingStore(self.root)
        vectors = np.load(store.vectors_path(self.shards[position]), mmap_mode="r")
        return np.asarray(vectors[self.rows(position)], dtype=np.float32)

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of the global ``ids`` (in that order), reading one shard at a time."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"{self.root}: ids outside [0, {len(self)})")
        out = np.zeros((len(ids), self.dim if len(self) else 0), np.float32)
        shard_of = np.searchsorted(self.starts, ids, side="right") - 1
        for position in np.unique(shard_of):
            here = np.flatnonzero(shard_of == position)
            out[here] = self.read(int(position))[ids[here] - self.starts[position]]
        return out

    def sample(self, size: int, seed: int = 0) -> np.ndarray:
        """``size`` vectors drawn without replacement (every vector when there are no more),
        in global-id order."""
        if size < len(self):
            log.info("%s: fitting on a sample of %d of %d vectors", self.root, size, len(self))
        return self.gather(sample_rows(len(self), size, seed))


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """``size`` of ``range(n)`` drawn without replacement, sorted (all when n <= size)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
