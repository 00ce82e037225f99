"""Sharded Parquet manifests: atomic shard commits, resume listing, validated reads."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.atomic import atomic_path, remove_temporaries
from manifests.errors import ManifestError, SchemaMismatchError
from manifests.schemas import SCHEMA_KEY, ManifestSchema

T = TypeVar("T")
_SHARD_RE = re.compile(r"^(\d{5,})\.parquet$")


def shard_stem(index: int) -> str:
    return f"{index:05d}"


def pending_shards(items: list[T], size: int, done: Iterable[int]) -> list[tuple[int, list[T]]]:
    """``(shard index, its items)`` for the shards of ``items`` (``size`` each, in order)
    that are not in ``done``: what a resumed stage still has to write."""
    done = set(done)
    return [(i, items[i * size : (i + 1) * size])
            for i in range(math.ceil(len(items) / size)) if i not in done]  # fmt: skip


def validate_schema(found: pa.Schema, expected: ManifestSchema, path: str | os.PathLike) -> None:
    """Raise :class:`SchemaMismatchError` naming ``path`` and the first bad column.

    Extra columns are allowed (later stages may add some); missing columns, wrong types
    and a different schema tag are not.
    """
    for field in expected.arrow:
        idx = found.get_field_index(field.name)
        if idx < 0:
            raise SchemaMismatchError(str(path), field.name, f"a {field.type} column", "none")
        got = found.field(idx).type
        if not got.equals(field.type):
            raise SchemaMismatchError(str(path), field.name, str(field.type), str(got))
    tag = (found.metadata or {}).get(SCHEMA_KEY)
    if tag is not None and tag.decode() != expected.tag:
        raise SchemaMismatchError(str(path), "<schema>", expected.tag, tag.decode())


class ShardedParquet:
    """A directory of ``NNNNN.parquet`` shards under one schema.

    A shard exists under its final name only once it is complete, so :meth:`complete`
    is the resume list.
    """

    def __init__(self, root: str | os.PathLike, schema: ManifestSchema) -> None:
        self.root = Path(root)
        self.schema = schema

    def path(self, index: int) -> Path:
        return self.root / f"{shard_stem(index)}.parquet"

    def complete(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (_SHARD_RE.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def remove_partial(self) -> int:
        return remove_temporaries(self.root)

    def write(self, index: int, table: pa.Table, config: dict[str, Any] | None = None) -> Path:
        """Validate ``table`` and commit it atomically as shard ``index``."""
        path = self.path(index)
        schema = self.schema.with_metadata(config)
        table = table.select(self.schema.names)
        if table.schema.equals(schema, check_metadata=False):
            # the usual case: only the metadata to stamp. A cast would also import
            # pyarrow.compute in every process that writes a shard.
            table = table.replace_schema_metadata(schema.metadata)
        else:
            table = table.cast(schema)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return path

    def write_table(
        self, table: pa.Table, rows_per_shard: int, config: dict[str, Any] | None = None
    ) -> None:
        """Replace the directory's content with ``table`` cut into shards, in order (one
        empty shard for an empty table, so a reader finds the schema)."""
        self.remove_partial()
        for index in range(max(1, math.ceil(table.num_rows / rows_per_shard))):
            self.write(index, table.slice(index * rows_per_shard, rows_per_shard), config)

    def read_shard(self, index: int, columns: list[str] | None = None) -> pa.Table:
        return read_parquet(self.path(index), self.schema, columns)

    def iter_shards(self, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        for index in self.complete():
            yield index, self.read_shard(index, columns)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        tables = [t for _, t in self.iter_shards(columns)]
        if not tables:
            return self.schema.arrow.empty_table().select(columns or self.schema.names)
        return pa.concat_tables(tables)


def read_parquet(
    path: str | os.PathLike, schema: ManifestSchema, columns: list[str] | None = None
) -> pa.Table:
    """Read one Parquet file, validating it against ``schema`` first."""
    try:
        found = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"{path}: not a readable Parquet file ({exc})") from exc
    validate_schema(found, schema, path)
    return read_table(path, columns)


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """``pq.read_table``, a damaged file reported as a ManifestError naming it."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"{path}: not a readable Parquet file ({exc}); rerun the stage "
                            "that wrote it") from exc  # fmt: skip


def manifest_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into the sorted list of Parquet files they hold."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.glob("*.parquet") if _SHARD_RE.match(q.name)))
        elif p.is_file():
            out.append(p)
        else:
            raise ManifestError(f"{p}: no such manifest file or directory")
    return out


def read_manifest(
    paths: Iterable[str | os.PathLike], schema: ManifestSchema, columns: list[str] | None = None
) -> pa.Table:
    """Read and concatenate manifests given as files or shard directories."""
    files = manifest_files(paths)
    if not files:
        return schema.arrow.empty_table().select(columns or schema.names)
    return pa.concat_tables([read_parquet(f, schema, columns) for f in files])


IMAGE_MANIFEST = pa.schema([("id", pa.string()), ("path", pa.string()), ("tar", pa.string()),
                            ("key", pa.string()), ("label", pa.int64())])  # fmt: skip


def portable_location(
    row: dict[str, Any], manifest_dir: str | os.PathLike, root: str | os.PathLike | None
) -> dict[str, Any]:
    """``row`` with its ``path`` or ``tar`` as a manifest in ``manifest_dir`` stores it:
    relative to that directory when the image lies under ``root`` (a build directory,
    which may be moved or mounted elsewhere as a whole), else absolute."""
    located = dict(row)
    for key in ("path", "tar"):
        if row.get(key):
            target = os.path.abspath(row[key])
            inside = root is not None and Path(target).is_relative_to(os.path.abspath(root))
            located[key] = os.path.relpath(target, os.path.abspath(manifest_dir)) if inside \
                else target  # fmt: skip
    return located


def write_image_manifest(
    rows: list[dict[str, Any]], path: str | os.PathLike, root: str | os.PathLike | None = None
) -> Path:
    """One Parquet file listing images (id, path or tar + key, label), written atomically:
    what ``read_image_rows`` and every stage that reads images accept. Paths are stored as
    :func:`portable_location` says (a relative one is read relative to the manifest's
    directory)."""
    rows = [portable_location(r, Path(path).parent, root) for r in rows]
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=IMAGE_MANIFEST), tmp)
    return Path(path)
