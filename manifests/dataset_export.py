"""A manifest's images as a dataset other tools read: WebDataset tar shards or a Hugging
Face dataset (Parquet with an ``Image`` feature).

Each row becomes one sample: its image bytes as stored (no re-encoding) and its metadata
(id, and the LVD manifest's provenance: seed sets, methods, seed ids, similarity, cluster,
copies; label when the manifest has one). Shards follow the manifest's order, so a rerun
plans the same shards: a shard that exists holds exactly the ids planned for it (read back
and checked) or is written again. ``export.json`` reconciles the counts: every row is
exported or listed as failed with the reason.

- ``webdataset``: ``DIR/NNNNN.tar`` of ``KEY.<ext>`` + ``KEY.json`` (``webdataset``'s
  convention: a key without dots; the row id, with other characters replaced, is the key).
- ``hf``: ``DIR/data/train-NNNNN-of-MMMMM.parquet`` (the layout ``datasets.load_dataset(DIR)``
  reads as the train split), an ``image`` column of ``{bytes, path}`` declared as
  ``datasets``' ``Image`` feature in the Parquet schema's ``huggingface`` metadata.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from manifests.atomic import atomic_path, remove_temporaries, write_bytes_atomic
from manifests.config import ConfigError
from manifests.errors import ManifestError
from manifests.image_rows import ImageBytesReader, image_sources, open_image
from manifests.image_shards import ImageShardReader, ImageShardWriter, tar_shard_path
from manifests.parquet_io import manifest_files, read_table

log = logging.getLogger(__name__)

FORMATS = ("webdataset", "hf")
# the manifest's columns that travel with each image (LVD provenance, and a label)
METADATA = ("seed_sets", "methods", "seed_ids", "best_similarity", "cluster", "copies", "label")
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
               "TIFF": "tiff"}  # fmt: skip
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Sample:
    id: str
    key: str  # the WebDataset key: the id with characters other than [A-Za-z0-9_-] as _
    source: str  # image file or tar shard
    member: str | None  # key inside the tar
    metadata: dict[str, Any]


def read_samples(manifests: list[str | Path]) -> list[Sample]:
    """Every row of the manifests, in order, with its metadata (one sample per row: an LVD
    row's ``copies`` is metadata, not repetition)."""
    samples: list[Sample] = []
    keys: set[str] = set()
    for file in manifest_files(manifests):
        table = read_table(file)
        names = [c for c in METADATA if c in table.column_names]
        columns = {
            c: table.column(c).to_pylist() for c in ("id", *names) if c in table.column_names
        }
        for i, (source, member) in enumerate(image_sources(file, table)):
            row_id = columns["id"][i] if "id" in columns else f"{file.name}:{i}"
            key = _KEY_UNSAFE.sub("_", str(row_id))
            if key in keys:
                raise ManifestError(f"{file}: row {i} (id {row_id!r}): a second row with the "
                                    f"sample key {key!r}; ids must be unique")  # fmt: skip
            keys.add(key)
            meta = {"id": row_id, **{c: columns[c][i] for c in names}}
            samples.append(Sample(str(row_id), key, source, member, meta))
    if not samples:
        raise ManifestError(f"{[str(m) for m in manifests]}: no rows to export")
    return samples


def export_dataset(
    manifests: list[str | Path], fmt: str, out: str | Path, shard_size: int = 5000,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Write the manifests' images in ``fmt`` under ``out``; returns (and writes as
    ``out/export.json``) the counts. Resumes: shards already written and verified are kept."""
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ConfigError(f"shard size {shard_size}: expected at least 1 sample per shard")
    out = Path(out)
    samples = read_samples(manifests)
    plan = [samples[i : i + shard_size] for i in range(0, len(samples), shard_size)]
    shards = WebDatasetShards(out) if fmt == "webdataset" else HFShards(out, len(plan))
    shards.remove_stale(len(plan))
    state = out / ".export"  # per shard, the rows it could not read (a rerun reports them)
    state.mkdir(parents=True, exist_ok=True)
    reader, failed, kept = ImageBytesReader(), [], 0
    for index, shard in enumerate(tqdm(plan, desc=f"export {fmt}", disable=not progress)):
        failures_file = state / f"{index:05d}.failed.json"
        recorded = json.loads(failures_file.read_text()) if failures_file.exists() else None
        if recorded is not None and shards.holds(index, _expected_keys(shard, recorded)):
            failed += recorded
            kept += 1
            continue
        shard_failed: list[dict] = []
        images = list(_read_images(shard, reader, shard_failed))
        write_bytes_atomic(failures_file, json.dumps(shard_failed).encode())
        shards.write(index, images)  # after the failures: a committed shard has its record
        failed += shard_failed
    summary = {
        "format": fmt, "rows": len(samples), "exported": len(samples) - len(failed),
        "failed": len(failed), "shards": len(plan), "shards_kept_from_before": kept,
        "failures": failed,
    }  # fmt: skip
    if summary["exported"] == 0:
        raise ManifestError(f"{out}: none of the {len(samples)} images could be read; first: "
                            f"{failed[0]['error']}")  # fmt: skip
    write_bytes_atomic(out / "export.json", json.dumps(summary, indent=1).encode())
    return summary


def _expected_keys(shard: list[Sample], failures: list[dict]) -> list[str]:
    unread = {f["id"] for f in failures}
    return [s.key for s in shard if s.id not in unread]


def _read_images(
    shard: list[Sample], reader: ImageBytesReader, failed: list[dict]
) -> Iterator[tuple[Sample, bytes, str]]:
    """(sample, encoded bytes, extension) of each readable image; the others go to
    ``failed`` with the reason."""
    for sample in shard:
        where = sample.source + (f"#{sample.member}" if sample.member else "")
        try:
            data = reader.read({"source": sample.source, "key": sample.member})
            with open_image(data) as image:
                ext = _EXTENSIONS.get(image.format or "")
            if ext is None:
                raise ValueError(f"{image.format} is not a format dataset readers decode")
        except (OSError, KeyError, ValueError, Image.DecompressionBombError) as exc:
            failed.append({"id": sample.id, "error": f"{where} (id {sample.id}): {exc}"})
            continue
        yield sample, data, ext


class WebDatasetShards:
    """``ROOT/NNNNN.tar`` shards of ``KEY.<ext>`` + ``KEY.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def remove_stale(self, shards: int) -> None:
        """Temporaries of a killed run, and shards past the plan's last."""
        self.root.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.root)
        for tar in self.root.glob("*.tar"):
            if not tar.stem.isdigit() or int(tar.stem) >= shards:
                tar.unlink()

    def holds(self, index: int, keys: list[str]) -> bool:
        path = tar_shard_path(self.root, index)
        try:
            return path.exists() and ImageShardReader(path).keys() == sorted(keys)
        except ManifestError as exc:
            log.warning("written again: %s", exc)
            return False

    def write(self, index: int, images: list[tuple[Sample, bytes, str]]) -> None:
        writer = ImageShardWriter(tar_shard_path(self.root, index))
        try:
            for sample, data, ext in images:
                writer.add(sample.key, data, sample.metadata, ext)
        except BaseException:
            writer.abort()
            raise
        writer.close()


class HFShards:
    """``ROOT/data/train-NNNNN-of-MMMMM.parquet``: ``image`` ({bytes, path}) and the
    metadata columns, the schema declaring ``datasets``' features."""

    def __init__(self, root: Path, shards: int) -> None:
        self.data = root / "data"
        self.shards = shards

    def path(self, index: int) -> Path:
        return self.data / f"train-{index:05d}-of-{self.shards:05d}.parquet"

    def remove_stale(self, shards: int) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.data)
        planned = {self.path(i).name for i in range(shards)}
        for file in self.data.glob("*.parquet"):
            if file.name not in planned:  # another plan's (other shard count) or past it
                file.unlink()

    def holds(self, index: int, keys: list[str]) -> bool:
        path = self.path(index)
        try:
            return path.exists() and pq.read_table(path, columns=["key"]).column(
                "key").to_pylist() == keys  # fmt: skip
        except (OSError, pa.ArrowException) as exc:
            log.warning("%s: written again (%s)", path, exc)
            return False

    def write(self, index: int, images: list[tuple[Sample, bytes, str]]) -> None:
        rows = [{"image": {"bytes": data, "path": f"{sample.key}.{ext}"}, "key": sample.key,
                 **{c: sample.metadata.get(c) for c in ("id", *METADATA)}}
                for sample, data, ext in images]  # fmt: skip
        table = pa.Table.from_pylist(rows, schema=_hf_schema())
        with atomic_path(self.path(index)) as tmp:
            pq.write_table(table, tmp)


def _hf_schema() -> pa.Schema:
    """Arrow types of the columns, and ``datasets``' features in the ``huggingface``
    metadata (what ``Dataset.to_parquet`` writes): ``image`` is an ``Image`` feature."""
    fields = [
        pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        pa.field("key", pa.string()), pa.field("id", pa.string()),
        pa.field("seed_sets", pa.list_(pa.string())), pa.field("methods", pa.list_(pa.string())),
        pa.field("seed_ids", pa.list_(pa.string())), pa.field("best_similarity", pa.float32()),
        pa.field("cluster", pa.int64()), pa.field("copies", pa.int32()),
        pa.field("label", pa.int64()),
    ]  # fmt: skip
    features = {"image": {"_type": "Image"}}
    for f in fields[1:]:
        if pa.types.is_list(f.type):
            features[f.name] = {"feature": {"dtype": "string", "_type": "Value"},
                                "_type": "List"}  # fmt: skip
        else:  # Arrow's "float" is datasets' "float32"; the other names agree
            dtype = {"float": "float32"}.get(str(f.type), str(f.type))
            features[f.name] = {"dtype": dtype, "_type": "Value"}
    meta = {"info": {"features": features}}
    return pa.schema(fields, metadata={"huggingface": json.dumps(meta)})
