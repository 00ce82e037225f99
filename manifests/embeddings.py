"""Embedding shards: vectors aligned with ids, readable with numpy and pyarrow alone.

Layout of an embedding directory::

    embed.json        model spec, dimension, inputs, rows per shard
    NNNNN.npy         float16 (rows, dim), L2-normalized; a zero row where ok is false
    NNNNN.parquet     id, ok (schema ``embedding_ids/1``), one row per vector, in order

The ``.npy`` is committed first and the ``.parquet`` last, so a shard whose Parquet file
exists is complete; a killed run leaves at most a ``.tmp-*`` file or a lone ``.npy``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from manifests.atomic import atomic_path
from manifests.errors import ManifestError
from manifests.job import claim_directory
from manifests.parquet_io import ShardedParquet, shard_stem
from manifests.schemas import EMBEDDING_IDS

META = "embed.json"


class EmbeddingStore:
    """A directory of embedding shards (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.ids = ShardedParquet(self.root, EMBEDDING_IDS)

    def vectors_path(self, index: int) -> Path:
        return self.root / f"{shard_stem(index)}.npy"

    def meta(self) -> dict[str, Any] | None:
        path = self.root / META
        return json.loads(path.read_text()) if path.exists() else None

    def claim(self, meta: dict[str, Any]) -> None:
        """Record the job writing here; refuse if complete shards of another job exist."""
        claim_directory(self.root, META, meta, bool(self.complete()))

    def complete(self) -> list[int]:
        return self.ids.complete()

    def write(self, index: int, ids: list[str], ok: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids) == len(ok) == len(vectors):
            raise ValueError(f"shard {index}: {len(ids)} ids, {len(ok)} flags, {len(vectors)} rows")
        with atomic_path(self.vectors_path(index)) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors.astype(np.float16))
        self.ids.write(index, pa.table({"id": ids, "ok": ok.astype(bool)}))

    def read_shard(self, index: int) -> tuple[pa.Table, np.ndarray]:
        ids = self.ids.read_shard(index)
        vectors = np.load(self.vectors_path(index))
        if len(vectors) != ids.num_rows:
            raise ManifestError(
                f"{self.vectors_path(index)}: {len(vectors)} vectors for {ids.num_rows} ids"
            )
        return ids, vectors

    def read(self, only_ok: bool = True) -> tuple[list[str], np.ndarray]:
        """All ids and float32 vectors, in shard order (rows of failed images left out)."""
        if not self.complete():
            raise ManifestError(f"{self.root}: no complete embedding shards")
        ids: list[str] = []
        chunks: list[np.ndarray] = []
        for index in self.complete():
            table, vectors = self.read_shard(index)
            keep = table.column("ok").to_numpy(zero_copy_only=False) | (not only_ok)
            ids += [i for i, k in zip(table.column("id").to_pylist(), keep, strict=True) if k]
            chunks.append(vectors[keep].astype(np.float32))
        return ids, np.concatenate(chunks)

    @property
    def model(self) -> str | None:
        return (self.meta() or {}).get("model")


def require_same_model(reference: EmbeddingStore, others: list[EmbeddingStore]) -> None:
    """Similarities across embedding directories mean something only within one model."""
    for store in others:
        if store.model != reference.model:
            raise ManifestError(
                f"{store.root}: embedded with {store.model!r}, {reference.root} with "
                f"{reference.model!r}; embed both with one model"
            )
