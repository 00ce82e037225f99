"""Image bytes in, stored image bytes out: safety checks, decode, orient, RGB, resize, encode.

Pillow parses the header first: format, declared size (decompression bombs are refused
before any pixel is decoded), mode and EXIF orientation. The pixels then take the fastest
correct path:
- plain JPEGs (RGB or grey, upright), most of the web, are decoded by OpenCV straight
  into an array, at a reduced DCT scale (1/2, 1/4, 1/8) when the image is at least twice
  the target size; OpenCV >= 5 refuses truncated JPEGs;
- everything else (PNG, WebP, GIF, CMYK, 16-bit, palette, alpha, rotated) is decoded by
  Pillow, which refuses truncated files, oriented and converted to RGB.
Both end in one resize and one JPEG encode by OpenCV. The resize is bicubic for
reductions down to half, where it is faster and closer to an antialiased reference than
INTER_AREA, and INTER_AREA below that, where bicubic aliases and INTER_AREA does not
(``benchmarks/resize_methods.py`` measures both, and Pillow's).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from curation.crawl.config import ProcessConfig
from curation.crawl.errors import CrawlError, ErrorCode
from manifests.allocator import keep_large_allocations

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}
_REDUCED_READ = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes  # JPEG
    width: int
    height: int
    original_width: int  # as displayed, after EXIF orientation
    original_height: int
    sha256: str


def init_worker() -> None:
    """Process setup for pixel work: one OpenCV thread (the caller supplies parallelism)."""
    cv2.setNumThreads(1)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    # every decoded or resized image is a fresh ~1 MB array
    keep_large_allocations(up_to=64 * 1024 * 1024, trim_above=256 * 1024 * 1024)


@contextmanager
def keep_opencv_threads() -> Iterator[None]:
    """Restore OpenCV's thread count on exit, for a process that crawls beside other work
    (:func:`init_worker` sets it to one)."""
    threads = cv2.getNumThreads()
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def process_image(data: bytes, config: ProcessConfig) -> ProcessedImage:
    """Turn downloaded bytes into the stored JPEG; raises :class:`CrawlError` on refusal."""
    image = _open(data, config)
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    width, height = image.size
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    _check_shape(width, height, config)
    plain_jpeg = image.format == "JPEG" and image.mode in ("RGB", "L") and orientation == 1
    if plain_jpeg:
        bgr = _decode_jpeg(data, max(width, height), config.max_side)
    else:
        bgr = cv2.cvtColor(_decode_with_pillow(image, orientation), cv2.COLOR_RGB2BGR)
    resized = _resize(bgr, config.max_side)
    _check_variation(resized, config.min_pixel_std)
    if plain_jpeg and image.mode == "RGB" and resized.shape[:2] == (height, width):
        stored = data  # nothing changed: keep the original bytes
    else:
        stored = encode_jpeg(resized, config.jpeg_quality)
    return ProcessedImage(
        data=stored,
        width=resized.shape[1],
        height=resized.shape[0],
        original_width=width,
        original_height=height,
        sha256=hashlib.sha256(stored).hexdigest(),
    )


def _open(data: bytes, config: ProcessConfig) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        raise CrawlError(ErrorCode.NOT_IMAGE, f"not a {'/'.join(FORMATS)} image") from exc
    except Image.DecompressionBombError as exc:
        raise CrawlError(ErrorCode.TOO_MANY_PIXELS, str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CrawlError(ErrorCode.DECODE_ERROR, f"unreadable header: {exc}") from exc
    w, h = image.size
    if w * h > config.max_pixels:
        raise CrawlError(
            ErrorCode.TOO_MANY_PIXELS, f"{w}x{h} declared, over the {config.max_pixels} cap"
        )
    return image


def _check_shape(width: int, height: int, config: ProcessConfig) -> None:
    short, long = min(width, height), max(width, height)
    if short < config.min_side:
        raise CrawlError(ErrorCode.TOO_SMALL, f"{width}x{height}: shorter side < {config.min_side}")
    if long / short > config.max_aspect_ratio:
        raise CrawlError(
            ErrorCode.BAD_ASPECT, f"{width}x{height}: aspect ratio > {config.max_aspect_ratio}"
        )


def _check_variation(pixels: np.ndarray, min_std: float) -> None:
    """Refuse a (nearly) one-colour image; measured on every 4th pixel of each 4th row."""
    # OpenCV's one pass in C, about 9x faster than numpy's std here, without the GIL
    std = float(cv2.meanStdDev(np.ascontiguousarray(pixels[::4, ::4]))[1].max())
    if std < min_std:
        raise CrawlError(ErrorCode.NEAR_CONSTANT, f"near-constant image: pixel standard "
                         f"deviation {std:.2f} < process.min_pixel_std {min_std}")  # fmt: skip


def _decode_jpeg(data: bytes, long_side: int, max_side: int) -> np.ndarray:
    """BGR pixels of a plain JPEG, DCT-reduced by the largest factor that keeps ``max_side``.

    Dropping DCT coefficients is a proper low-pass filter, and what remains to reduce is
    less than 2x, where the bicubic resize does not alias.
    """
    factor = max((f for f in _REDUCED_READ if long_side // f >= max_side), default=1)
    flags = _REDUCED_READ[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None:
        raise CrawlError(ErrorCode.DECODE_ERROR, "JPEG: truncated or corrupt")
    return bgr


def _decode_with_pillow(image: Image.Image, orientation: int) -> np.ndarray:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CrawlError(ErrorCode.DECODE_ERROR, f"{image.format}: {exc}") from exc
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    return to_rgb_array(image)


# transparent pixels show this colour: the ImageNet mean, which a model's normalisation
# maps to zero (white, as a browser shows them, made transparent images look alike)
MATTE = (124, 116, 104, 255)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB from any mode: palette, alpha (composited over :data:`MATTE`),
    CMYK, 16-bit, float."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, MATTE)
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _resize(pixels: np.ndarray, max_side: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = cv2.INTER_CUBIC if scale >= 0.5 else cv2.INTER_AREA
    return cv2.resize(pixels, size, interpolation=method)


def encode_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CrawlError(ErrorCode.INTERNAL, "JPEG encoding failed")
    return buf.tobytes()
