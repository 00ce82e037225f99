"""The safety stage over a pool: every image gets an NSFW score and its face boxes; images
at or over the NSFW threshold are dropped from the curated pool (the crawl keeps them), and
the others are what every later stage reads, faces blurred.

Output, in shards committed together (``out/images/NNNNN.tar`` first, then
``out/manifest/NNNNN.parquet``, whose presence marks the shard done):

- ``manifest/``: one row per input image (schema ``safety/1``): status ``ok`` (kept),
  ``nsfw`` (dropped) or ``error`` (not checked: undecodable, too many pixels; dropped with
  the reason), the score, the face boxes, and where the image to read lies: the stage's
  blurred copy when it had faces, else the original. It is an image manifest, so later
  stages read it as they read the crawl's (rows not ``ok`` are left out).
- ``images/``: blurred copies of the images with faces (the crawl's shards stay as
  downloaded).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageOps

from curation.local_runner import run_locally
from curation.safety.blur import blur_boxes
from curation.safety.detector import Detections, DetectorConfig, SafetyDetector
from curation.tasks import ItemCounter, ShardRunner, ShardTasks
from manifests.atomic import remove_temporaries, write_bytes_atomic
from manifests.config import bounded
from manifests.errors import ManifestError
from manifests.image_rows import (
    ImageBytesReader,
    ImageRow,
    open_image,
    require_image_rows,
    row_location,
)
from manifests.image_shards import ImageShardWriter, tar_shard_path
from manifests.job import claim_directory, relative_paths
from manifests.parquet_io import ShardedParquet, pending_shards, portable_location
from manifests.schemas import SAFETY

log = logging.getLogger(__name__)


@dataclass
class SafetyConfig:
    nsfw: bool = True  # drop images whose NSFW score reaches the threshold
    nsfw_threshold: float = bounded(0.5, at_least=0.0, at_most=1.0)
    blur_faces: bool = True
    blur_blocks: int = bounded(8, at_least=1)  # pixel blocks across a blurred face
    blur_margin: float = bounded(0.15, at_least=0.0)  # of the box, on every side
    jpeg_quality: int = bounded(90, at_least=1, at_most=100)  # of the blurred copies
    max_pixels: int = bounded(40_000_000, at_least=1)  # larger images are skipped as errors
    batch_size: int = bounded(16, at_least=1)  # images per detector call
    rows_per_shard: int = bounded(10_000, at_least=1)
    detector: DetectorConfig = field(default_factory=DetectorConfig)


@dataclass(frozen=True)
class SafetyOutput:
    """Where a safety stage's results lie under its directory."""

    out: Path

    @property
    def manifest(self) -> ShardedParquet:
        return ShardedParquet(self.out / "manifest", SAFETY)

    @property
    def images(self) -> Path:
        return self.out / "images"

    @property
    def stats(self) -> Path:
        return self.out / "safety_stats.json"


def check_pool(
    manifests: list[str | Path],
    out: str | Path,
    config: SafetyConfig,
    root: str | Path | None = None,
    progress: bool = True,
    runner: ShardRunner = run_locally,
) -> dict[str, Any]:
    """Run the stage over the images of ``manifests`` into ``out``; complete shards are kept.
    Locations under ``root`` (default ``out``) are written relative to the manifest.
    Returns the stats (also in ``out/safety_stats.json``)."""
    config.detector.validate()
    rows = require_image_rows(manifests)
    output = SafetyOutput(Path(out))
    store = output.manifest
    job = {"manifests": relative_paths(manifests, store.root), "rows": len(rows),
           "rows_per_shard": config.rows_per_shard}  # fmt: skip
    claim_directory(store.root, "safety.json", job, bool(store.complete()))
    store.remove_partial()
    remove_temporaries(output.images)
    todo = pending_shards(rows, config.rows_per_shard, store.complete())
    root = str(root if root is not None else out)
    tasks = [(i, chunk, str(out), config, root) for i, chunk in todo]
    runner(ShardTasks(check_shard, tasks, "safety", sum(len(c) for _, c in todo), "img",
                      gpus=1.0), progress)  # fmt: skip
    stats = summarize(store.read(["status", "error", "faces", "blurred"]), config)
    write_bytes_atomic(output.stats, json.dumps(stats, indent=1).encode())
    if stats["kept"] == 0:
        raise ManifestError(f"safety: no image of {stats['images']} kept: {stats['nsfw']} "
                            f"NSFW, {stats['errors']} unreadable {stats['error_reasons']} "
                            f"(see {output.manifest.root})")  # fmt: skip
    return stats


_DETECTORS: dict[str, SafetyDetector] = {}


def _detector(config: DetectorConfig) -> SafetyDetector:
    """One session per process and setting: a worker that runs many shards loads it once."""
    key = json.dumps(asdict(config), sort_keys=True)
    if key not in _DETECTORS:
        _DETECTORS[key] = SafetyDetector(config)
    return _DETECTORS[key]


def check_shard(
    index: int,
    rows: list[ImageRow],
    out: str,
    config: SafetyConfig,
    root: str,
    on_items: ItemCounter | None = None,
) -> None:
    """Check the images of ``rows`` and commit shard ``index``: its blurred copies, then its
    manifest rows. ``on_items(done, ok)`` is called as batches finish."""
    output = SafetyOutput(Path(out))
    detector = _detector(config.detector)
    reader = ImageBytesReader()
    tar = tar_shard_path(output.images, index)
    output.images.mkdir(parents=True, exist_ok=True)
    checked: list[dict[str, Any]] = []
    with ImageShardWriter(tar) as writer:
        for start in range(0, len(rows), config.batch_size):
            batch = rows[start : start + config.batch_size]
            decoded = [_decode(reader, row, config.max_pixels) for row in batch]
            images = [d for d in decoded if isinstance(d, np.ndarray)]
            found = iter(detector(images))
            for row, image in zip(batch, decoded, strict=True):
                key = f"{index:05d}_{len(checked):06d}"
                if isinstance(image, np.ndarray):
                    checked.append(_checked(row, image, next(found), config, writer, key))
                else:
                    checked.append(_failed(row, image))
            if on_items is not None:
                on_items(len(batch), sum(r["status"] == "ok" for r in checked[-len(batch) :]))
    store = output.manifest
    checked = [portable_location(r, store.root, root) for r in checked]
    store.write(index, pa.Table.from_pylist(checked, schema=SAFETY.arrow))


def _decode(reader: ImageBytesReader, row: ImageRow, max_pixels: int) -> np.ndarray | str:
    """The row's image as RGB pixels (upright), or why it cannot be checked."""
    try:
        data = reader.read(row)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = open_image(data)
            if image.width * image.height > max_pixels:
                return f"too many pixels: {image.width}x{image.height}, over the {max_pixels} cap"
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - one bad image is a row, never fatal
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _failed(row: ImageRow, error: str) -> dict[str, Any]:
    log.warning("safety: cannot check %s (%s): %s", row["id"], row["source"], error)
    return {"id": row["id"], "status": "error", "error": error, "blurred": False,
            **row_location(row)}  # fmt: skip


def _checked(row: ImageRow, image: np.ndarray, seen: Detections, config: SafetyConfig,
             writer: ImageShardWriter, key: str) -> dict[str, Any]:  # fmt: skip
    """The manifest row of a decoded image; its blurred copy goes to ``writer``."""
    boxes = [b for b in seen.face_boxes if b[2] > 0 and b[3] > 0]
    if len(boxes) < len(seen.face_boxes):
        log.warning("safety: %s: %d empty face boxes skipped", row["id"],
                    len(seen.face_boxes) - len(boxes))  # fmt: skip
    nsfw = config.nsfw and seen.nsfw_score >= config.nsfw_threshold
    result = {"id": row["id"], "status": "nsfw" if nsfw else "ok", "error": None,
              "nsfw_score": seen.nsfw_score, "nsfw_label": seen.nsfw_label,
              "faces": len(boxes), "face_boxes": [list(b) for b in boxes],
              "face_scores": seen.face_scores[: len(boxes)], "blurred": False,
              **row_location(row)}  # fmt: skip
    if boxes and config.blur_faces and not nsfw:
        blurred = blur_boxes(image, boxes, config.blur_blocks, config.blur_margin)
        buf = io.BytesIO()
        Image.fromarray(blurred).save(buf, "JPEG", quality=config.jpeg_quality)
        writer.add(key, buf.getvalue(), {"id": row["id"], "faces": len(boxes)})
        result |= {"blurred": True, "path": None, "tar": str(writer.path), "key": key}
    return result


def summarize(table: pa.Table, config: SafetyConfig) -> dict[str, Any]:
    """The stage's counts from its manifest (``status``, ``error``, ``faces``, ``blurred``)."""
    status = Counter(table.column("status").to_pylist())
    faces = table.column("faces")
    errors = Counter(e.split(":")[0] for e in table.column("error").drop_null().to_pylist())
    stats = {"images": table.num_rows, "kept": status["ok"], "nsfw": status["nsfw"],
             "errors": status["error"], "error_reasons": dict(errors),
             "with_faces": int(pc.sum(pc.greater(faces, 0)).as_py() or 0),
             "faces": int(pc.sum(faces).as_py() or 0),
             "blurred": int(pc.sum(table.column("blurred")).as_py() or 0),
             "nsfw_threshold": config.nsfw_threshold if config.nsfw else None}  # fmt: skip
    return stats
