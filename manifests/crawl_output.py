"""The layout of a crawl directory, and committing one crawled shard into it.

``shards/NNNNN.tar`` (images), ``stats/NNNNN.json`` (per-shard stats) and
``manifest/pool/NNNNN.parquet`` (one pool row per URL, schema ``pool/2``). A pool row of an
image names its ``shard`` and ``key``; :meth:`CrawlOutput.of_pool_file` finds the shard's
tar from the pool file that lists it. Images stream into the shard's tar (under a
temporary name) as they are ready, so a shard never holds all its images in memory; the
Parquet file is committed last, and its presence marks the shard complete.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from manifests.atomic import remove_temporaries, write_bytes_atomic
from manifests.image_shards import ImageShardWriter, tar_shard_path
from manifests.parquet_io import ShardedParquet, shard_stem
from manifests.schemas import POOL

POOL_DIR = ("manifest", "pool")


@dataclass
class ShardStats:
    shard: int
    rows: int = 0
    ok: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    stored_bytes: int = 0
    elapsed_s: float = 0.0
    source: str = ""  # what it was crawled from (curation.crawl.urls.shard_source)

    @property
    def images_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}


class CrawlOutput:
    """A crawl directory: ``shards/``, ``manifest/pool/``, ``stats/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shards_dir = self.root / "shards"
        self.stats_dir = self.root / "stats"
        self.pool = ShardedParquet(self.root.joinpath(*POOL_DIR), POOL)

    @classmethod
    def of_pool_file(cls, file: Path) -> CrawlOutput:
        """The crawl whose pool manifest holds ``file`` (``<crawl>/manifest/pool/X.parquet``)."""
        return cls(file.parent.parent.parent)

    def tar_path(self, index: int) -> Path:
        return tar_shard_path(self.shards_dir, index)

    def complete_shards(self) -> set[int]:
        return set(self.pool.complete())

    def remove_partial(self) -> None:
        for d in (self.shards_dir, self.stats_dir, self.pool.root):
            remove_temporaries(d)

    def remove_stale(self, sources: list[str]) -> list[int]:
        """Remove every committed shard that was not crawled from ``sources[index]`` (other
        URLs or settings, or an index the plan no longer has); returns their indices."""
        stale = [i for i in sorted(self.complete_shards())
                 if i >= len(sources) or self.shard_stats(i).source != sources[i]]  # fmt: skip
        for i in stale:
            self.pool.path(i).unlink()  # first: the shard no longer counts as complete
            self.stats_path(i).unlink(missing_ok=True)
            self.tar_path(i).unlink(missing_ok=True)
        return stale

    def stats_path(self, index: int) -> Path:
        return self.stats_dir / f"{shard_stem(index)}.json"

    def shard_stats(self, index: int) -> ShardStats:
        data = json.loads(self.stats_path(index).read_text())
        data.pop("images_per_s", None)
        return ShardStats(**data)

    def image_writer(self, index: int) -> ImageShardWriter:
        return ImageShardWriter(self.tar_path(index))

    def commit(
        self,
        index: int,
        images: ImageShardWriter,
        rows: list[dict[str, Any]],
        stats: ShardStats,
        config: dict[str, Any],
    ) -> None:
        """Commit shard ``index``: its tar, then its stats, then its pool rows (schema pool/2)."""
        images.close()
        write_bytes_atomic(self.stats_path(index), json.dumps(stats.to_json(), indent=1).encode())
        table = pa.Table.from_pylist(rows, schema=POOL.arrow)
        self.pool.write(index, table, config)
