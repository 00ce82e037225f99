"""Images listed in a manifest, decoded for training; bad images are skipped and counted.

A row locates its image either by ``path`` (an image file) or as a sample of a tar shard:
``tar`` (a shard path) and ``key``, or, for crawl pool manifests, ``shard`` and ``key``
with the shards in ``<crawl dir>/shards/``. Rows of a pool manifest whose status is not
``ok`` have no image and are left out when the manifest is read.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset

from manifests.errors import ManifestError
from manifests.image_shards import ImageShardReader, tar_shard_path
from manifests.parquet_io import manifest_files

log = logging.getLogger(__name__)


def read_image_rows(paths: list[str | Path]) -> list[dict[str, Any]]:
    """``[{"id", "source", "key", "label"}]`` for every usable row of the manifests, in order."""
    rows: list[dict[str, Any]] = []
    for file in manifest_files(paths):
        table = pq.read_table(file)
        if "status" in table.column_names:
            table = table.filter(pc.equal(table.column("status"), "ok"))
        names = set(table.column_names)
        ids = table.column("id").to_pylist() if "id" in names else [None] * table.num_rows
        sources = _sources(file, table)
        labels = table.column("label").to_pylist() if "label" in names else [None] * len(sources)
        for i, (source, key) in enumerate(sources):
            rows.append(
                {
                    "id": ids[i] if ids[i] is not None else f"{file.name}:{i}",
                    "source": source,
                    "key": key,
                    "label": labels[i],
                }
            )
    return rows


def require_image_rows(paths: list[str | Path]) -> list[dict[str, Any]]:
    """``read_image_rows``, refusing manifests that list no usable image."""
    rows = read_image_rows(paths)
    if not rows:
        raise ManifestError(f"{[str(p) for p in paths]}: no usable image rows")
    return rows


def row_location(row: dict[str, Any]) -> dict[str, str | None]:
    """A row as manifest columns: ``path`` for an image file, else ``tar`` + ``key``."""
    if row["key"] is None:
        return {"path": row["source"], "tar": None, "key": None}
    return {"path": None, "tar": row["source"], "key": row["key"]}


def _sources(file: Path, table: pa.Table) -> list[tuple[str, str | None]]:
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
    shards_dir = file.parent.parent.parent / "shards"  # <crawl>/manifest/pool/X.parquet
    sources = []
    for row, (path, tar, shard, key) in enumerate(zip(paths, tars, shards, keys, strict=True)):
        if path is not None:
            sources.append((str(_resolve(file, path)), None))
        elif tar is not None and key is not None:
            sources.append((str(_resolve(file, tar)), key))
        elif shard is not None and key is not None:
            sources.append((str(tar_shard_path(shards_dir, shard)), key))
        else:
            raise ManifestError(f"{file}: row {row} has no path, tar + key or shard + key")
    return sources


def _resolve(manifest: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else manifest.parent / p


class ManifestImageDataset(Dataset):
    """Decoded RGB images (3, H, W) in [0, 1], passed through ``transform``.

    An image that is missing or cannot be decoded yields ``None`` (and a warning naming
    it); the collate function drops it and counts it, so one bad file never ends a run.
    """

    def __init__(self, rows: list[dict[str, Any]], transform: Callable | None = None) -> None:
        self.rows = rows  # as read_image_rows returns them
        self.transform = transform
        self._readers: dict[str, ImageShardReader] = {}  # per worker process

    @classmethod
    def from_manifests(
        cls, paths: list[str | Path], transform: Callable | None = None
    ) -> ManifestImageDataset:
        return cls(require_image_rows(paths), transform)

    def __len__(self) -> int:
        return len(self.rows)

    def read_bytes(self, row: dict[str, Any]) -> bytes:
        if row["key"] is None:
            return Path(row["source"]).read_bytes()
        reader = self._readers.get(row["source"])
        if reader is None:
            reader = self._readers[row["source"]] = ImageShardReader(row["source"])
        return reader.read_image(row["key"])

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        """``item`` is an index, or ``(index, seed)``: the seed fixes the augmentation."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        row = self.rows[index]
        try:
            with Image.open(io.BytesIO(self.read_bytes(row))) as image:
                pixels = np.asarray(image.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - any bad image is skipped, never fatal
            log.warning("skipping image %s (%s): %s", row["id"], row["source"], exc)
            return None
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
        if self.transform is None:
            return tensor
        if seed is not None:
            torch.manual_seed(seed)
        sample = self.transform(tensor)
        if seed is not None and isinstance(sample, dict):
            sample["seed"] = seed
        return sample
