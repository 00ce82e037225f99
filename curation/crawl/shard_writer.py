"""Committing one crawled shard: the image tar, its stats, then the pool Parquet.

Images stream into the shard's tar (under a temporary name) as they are ready, so a
shard never holds all its images in memory. The Parquet file is committed last; its
presence is what marks the shard complete.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from manifests.atomic import remove_temporaries, write_bytes_atomic
from manifests.image_shards import ImageShardWriter, tar_shard_path
from manifests.parquet_io import ShardedParquet, shard_stem
from manifests.schemas import POOL


@dataclass
class ShardStats:
    shard: int
    rows: int = 0
    ok: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    stored_bytes: int = 0
    elapsed_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}


class CrawlOutput:
    """The layout of a crawl directory: ``shards/``, ``manifest/pool/``, ``stats/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shards_dir = self.root / "shards"
        self.stats_dir = self.root / "stats"
        self.pool = ShardedParquet(self.root / "manifest" / "pool", POOL)

    def complete_shards(self) -> set[int]:
        return set(self.pool.complete())

    def remove_partial(self) -> None:
        for d in (self.shards_dir, self.stats_dir, self.pool.root):
            remove_temporaries(d)

    def shard_stats(self, index: int) -> ShardStats:
        data = json.loads((self.stats_dir / f"{shard_stem(index)}.json").read_text())
        data.pop("images_per_s", None)
        return ShardStats(**data)

    def image_writer(self, index: int) -> ImageShardWriter:
        return ImageShardWriter(tar_shard_path(self.shards_dir, index))

    def commit(
        self,
        index: int,
        images: ImageShardWriter,
        rows: list[dict[str, Any]],
        stats: ShardStats,
        config: dict[str, Any],
    ) -> None:
        """Commit shard ``index``: its tar, then its stats, then its pool rows (schema pool/1)."""
        images.close()
        write_bytes_atomic(
            self.stats_dir / f"{shard_stem(index)}.json",
            json.dumps(stats.to_json(), indent=1).encode(),
        )
        table = pa.Table.from_pylist(rows, schema=POOL.arrow)
        self.pool.write(index, table, config)


def sample_meta(row: dict[str, Any]) -> dict[str, Any]:
    """What the tar's ``KEY.json`` holds beside each image."""
    keys = ("id", "url", "page_url", "width", "height", "original_width", "original_height")
    return {k: row[k] for k in (*keys, "sha256")}


def count_codes(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(r["error_code"] for r in rows if r["error_code"] is not None))
