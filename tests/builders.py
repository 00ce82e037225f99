"""Builders of test inputs: hostile images, compressed bodies, small crawl settings."""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np
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
