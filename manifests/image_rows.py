"""Where the image of a manifest row lives, and its bytes.

A row locates its image either by ``path`` (an image file) or as a sample of a tar shard:
``tar`` (a shard path) and ``key``, or, for crawl pool manifests, ``shard`` and ``key``
with the shards in the crawl's directory (:class:`manifests.crawl_output.CrawlOutput`).
Rows of a pool manifest whose status is not ``ok`` have no image and are left out when
the manifest is read. Every stage and the trainer read images through this module.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from manifests.crawl_output import CrawlOutput
from manifests.errors import ManifestError
from manifests.image_shards import ImageShardReader
from manifests.parquet_io import manifest_files, read_table

# {"id", "source": an image file or a tar shard, "key": None or the tar key, "label"}
ImageRow = dict[str, Any]


def read_image_rows(paths: list[str | Path]) -> list[ImageRow]:
    """``[{"id", "source", "key", "label"}]`` for every usable row of the manifests, in
    order; a row with ``copies`` (an LVD manifest's balanced draw) is listed that many
    times."""
    rows: list[ImageRow] = []
    for file in manifest_files(paths):
        table = read_table(file)
        if "status" in table.column_names:
            table = table.filter(pc.equal(table.column("status"), "ok"))
        names = set(table.column_names)
        ids = table.column("id").to_pylist() if "id" in names else [None] * table.num_rows
        sources = image_sources(file, table)
        labels = table.column("label").to_pylist() if "label" in names else [None] * len(sources)
        copies = table.column("copies").to_pylist() if "copies" in names else [1] * len(sources)
        for i, (source, key) in enumerate(sources):
            row = {"id": ids[i] if ids[i] is not None else f"{file.name}:{i}",
                   "source": source, "key": key, "label": labels[i]}  # fmt: skip
            rows += [row] * (copies[i] or 1)
    return rows


def require_image_rows(paths: list[str | Path]) -> list[ImageRow]:
    """``read_image_rows``, refusing manifests that list no usable image."""
    rows = read_image_rows(paths)
    if not rows:
        raise ManifestError(f"{[str(p) for p in paths]}: no usable image rows")
    return rows


def row_location(row: ImageRow) -> dict[str, str | None]:
    """A row as manifest columns: ``path`` for an image file, else ``tar`` + ``key``."""
    if row["key"] is None:
        return {"path": row["source"], "tar": None, "key": None}
    return {"path": None, "tar": row["source"], "key": row["key"]}


def image_sources(file: Path, table: pa.Table) -> list[tuple[str, str | None]]:
    """(image file or tar shard, key inside the tar or None) of each row. A row is located
    by ``path``, else by ``tar`` + ``key``, else by a crawl pool's ``shard`` + ``key``."""
    names = set(table.column_names)
    if not ({"path"} <= names or {"tar", "key"} <= names or {"shard", "key"} <= names):
        raise ManifestError(
            f"{file}: no image location; expected a 'path' column, or 'tar' and 'key', "
            f"or 'shard' and 'key' (found {sorted(names)})"
        )

    def column(name: str) -> list[Any]:
        return table.column(name).to_pylist() if name in names else [None] * table.num_rows

    paths, tars, shards, keys = column("path"), column("tar"), column("shard"), column("key")
    crawl = CrawlOutput.of_pool_file(file)
    sources = []
    for row, (path, tar, shard, key) in enumerate(zip(paths, tars, shards, keys, strict=True)):
        if path is not None:
            sources.append((str(_resolve(file, path)), None))
        elif tar is not None and key is not None:
            sources.append((str(_resolve(file, tar)), key))
        elif shard is not None and key is not None:
            sources.append((str(crawl.tar_path(shard)), key))
        else:
            raise ManifestError(f"{file}: row {row} has no path, tar + key or shard + key")
    return sources


def _resolve(manifest: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else manifest.parent / p


class ImageBytesReader:
    """The encoded image of a row: an image file, or a tar member read by offset (each
    tar is indexed once, on first use, per reader: one reader per process)."""

    def __init__(self) -> None:
        self._shards: dict[str, ImageShardReader] = {}
        self._indexing = threading.Lock()  # threads share it: each tar is indexed once

    def read(self, row: ImageRow) -> bytes:
        if row["key"] is None:
            return Path(row["source"]).read_bytes()
        with self._indexing:
            shard = self._shards.get(row["source"])
            if shard is None:
                shard = self._shards[row["source"]] = ImageShardReader(row["source"])
        return shard.read_image(row["key"])


class UnreadableImageError(ValueError):
    """Bytes that no image decoder of Pillow's reads (the caller names their row)."""


def open_image(data: bytes) -> Image.Image:
    """Pillow's image of encoded bytes; bytes it cannot identify raise
    :class:`UnreadableImageError` saying what they start with (Pillow's own message names
    only an in-memory buffer's address)."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableImageError(f"not an image Pillow reads ({len(data):,} bytes, starting "
                                   f"{data[:12]!r})") from None  # fmt: skip
