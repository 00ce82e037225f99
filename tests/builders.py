"""Builders of test inputs: hostile images, compressed bodies, small crawl settings."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curation.crawl.config import CrawlConfig


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


def small_crawl_config() -> CrawlConfig:
    """Small, fast settings for crawls against the loopback web."""
    config = CrawlConfig(shard_size=16, processes=2)
    f = config.fetch
    f.allowed_networks = ["127.0.0.0/8"]
    f.connect_timeout_s, f.read_timeout_s, f.total_timeout_s = 2.0, 2.0, 2.0
    f.max_retries, f.backoff_base_s = 2, 0.05
    f.max_bytes = 2_000_000
    config.process.max_side = 320
    return config


def skimage_photos(max_side: int = 192) -> dict[str, Image.Image]:
    """The real photographs and textures the scikit-image wheel ships, downscaled."""
    import skimage

    root = Path(skimage.__file__).parent / "data"
    photos = {}
    for name in SKIMAGE_PHOTOS:
        (path,) = [p for p in root.iterdir() if p.stem == name and p.suffix in (".png", ".jpg")]
        image = Image.open(path).convert("RGB")
        image.thumbnail((max_side, max_side))
        photos[name] = image
    return photos


SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock_motion", "coffee",
                  "coins", "color", "grass", "gravel", "horse", "hubble_deep_field", "ihc",
                  "logo", "moon", "page", "retina", "rocket", "text")  # fmt: skip


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def path_manifest(root: Path, name: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` (id -> image bytes) under ``root/name/`` and a manifest listing them."""
    (root / name).mkdir(parents=True, exist_ok=True)
    for id_, data in files.items():
        (root / name / f"{id_}.jpg").write_bytes(data)
    manifest = root / f"{name}.parquet"
    pq.write_table(pa.table({"id": list(files), "path": [f"{name}/{i}.jpg" for i in files]}),
                   manifest)  # fmt: skip
    return manifest
