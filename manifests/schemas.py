"""Versioned Arrow schemas of the manifests that stages exchange.

Each schema carries its name and version in the Arrow metadata (``lvd.schema``), so a
reader can tell which contract a file was written under without our code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

SCHEMA_KEY = b"lvd.schema"
CONFIG_KEY = b"lvd.config"


@dataclass(frozen=True)
class ManifestSchema:
    """An Arrow schema with a name and a version, e.g. ``pool/1``."""

    name: str
    version: int
    arrow: pa.Schema

    @property
    def tag(self) -> str:
        return f"{self.name}/{self.version}"

    def with_metadata(self, config: dict[str, Any] | None = None) -> pa.Schema:
        """The Arrow schema stamped with this tag and, optionally, the producing config."""
        meta = {SCHEMA_KEY: self.tag.encode()}
        if config is not None:
            meta[CONFIG_KEY] = json.dumps(config, sort_keys=True, default=str).encode()
        return self.arrow.with_metadata(meta)

    @property
    def names(self) -> list[str]:
        return self.arrow.names


POOL = ManifestSchema(
    name="pool",
    version=2,  # 2: fetch_s
    arrow=pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("url", pa.string(), nullable=False),
            pa.field("page_url", pa.string()),
            pa.field("status", pa.string(), nullable=False),  # "ok" or "error"
            pa.field("error_code", pa.string()),  # curation.crawl.errors.ErrorCode
            pa.field("error_message", pa.string()),
            pa.field("http_status", pa.int16()),
            pa.field("bytes", pa.int64()),  # size of the stored image bytes
            pa.field("original_width", pa.int32()),
            pa.field("original_height", pa.int32()),
            pa.field("width", pa.int32()),  # of the stored image
            pa.field("height", pa.int32()),
            pa.field("sha256", pa.string()),  # of the stored image bytes
            pa.field("shard", pa.int32(), nullable=False),
            pa.field("key", pa.string()),  # sample key inside the tar shard (ok rows)
            pa.field("fetch_time", pa.timestamp("ms", tz="UTC")),
            # seconds from the URL's first try to its outcome, retries and waits included
            pa.field("fetch_s", pa.float32()),
        ]
    ),
)

EMBEDDING_IDS = ManifestSchema(
    name="embedding_ids",
    version=1,
    arrow=pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("ok", pa.bool_(), nullable=False),  # False: undecodable, zero vector
        ]
    ),
)

HASHES = ManifestSchema(
    name="hashes",
    version=1,
    arrow=pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("ok", pa.bool_(), nullable=False),  # False: undecodable, no hashes
            pa.field("error", pa.string()),
            pa.field("sha256", pa.string()),  # of the stored image bytes
            pa.field("phash", pa.int64()),  # imagehash pHash, 64 bits as a signed integer
            pa.field("thumb", pa.binary()),  # 16x16 grayscale, the PCA hash's input
            pa.field("pixels", pa.int64()),  # width x height
        ]
    ),
)

DEDUP = ManifestSchema(
    name="dedup",
    version=1,
    arrow=pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("exact_group", pa.int64(), nullable=False),  # row of its first member
            pa.field("hash_group", pa.int64(), nullable=False),
            pa.field("copy_component", pa.int64(), nullable=False),
            pa.field("keep", pa.bool_(), nullable=False),
            pa.field("reason", pa.string()),  # curation.dedup.policy.Reason, null if kept
            pa.field("representative", pa.string(), nullable=False),  # kept id of its group
        ]
    ),
)

SAFETY = ManifestSchema(
    name="safety",
    version=1,
    arrow=pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            # ok: kept (its faces blurred); nsfw: dropped from the curated pool; error: not
            # checked (undecodable, too many pixels), dropped with the reason in ``error``
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("nsfw_score", pa.float32()),  # highest exposed-part confidence
            pa.field("nsfw_label", pa.string()),  # the class that gave it
            pa.field("faces", pa.int32()),
            pa.field("face_boxes", pa.list_(pa.list_(pa.int32(), 4))),  # x, y, width, height
            pa.field("face_scores", pa.list_(pa.float32())),
            pa.field("blurred", pa.bool_()),  # the image below is the stage's blurred copy
            pa.field("path", pa.string()),  # the image every later stage reads: a file, or
            pa.field("tar", pa.string()),  # a tar shard (the stage's own, when blurred) and
            pa.field("key", pa.string()),  # the sample key in it
        ]
    ),
)

LVD = ManifestSchema(
    name="lvd",
    version=2,
    arrow=pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("path", pa.string()),  # an image file, or
            pa.field("tar", pa.string()),  # a tar shard and
            pa.field("key", pa.string()),  # the sample key in it
            pa.field("seed_sets", pa.list_(pa.string()), nullable=False),
            # as_is / sample / cluster / balanced (DINOv3's LVD-1689M mixes the last two)
            pa.field("methods", pa.list_(pa.string()), nullable=False),
            pa.field("seed_ids", pa.list_(pa.string())),  # seeds that retrieved it
            pa.field("best_similarity", pa.float32()),  # cosine to a seed (or centroid)
            pa.field("cluster", pa.int64()),  # pool cluster when retrieved by clustering
            # times the trainer reads it per pass (a balanced draw's multiplier); null: once
            pa.field("copies", pa.int32()),
        ]
    ),
)

# Nearest neighbours found by a sharded search (curation.sharded_search), one shard per
# query shard: ids are positions among the vectors that take part (curation.vector_shards)
NEIGHBOURS = ManifestSchema(
    name="neighbours",
    version=1,
    arrow=pa.schema(
        [
            pa.field("query", pa.int64(), nullable=False),
            pa.field("base", pa.int64(), nullable=False),
            pa.field("similarity", pa.float32(), nullable=False),  # cosine
            pa.field("rank", pa.int32(), nullable=False),  # 0: the query's nearest
        ]
    ),
)

SCHEMAS: dict[str, ManifestSchema] = {
    s.name: s for s in (POOL, EMBEDDING_IDS, HASHES, SAFETY, DEDUP, LVD, NEIGHBOURS)
}
