"""Image processing: safety checks, modes, orientation, resize, re-encode."""

from __future__ import annotations

import hashlib
import io
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from builders import jpeg_with_orientation, png_declaring
from curation.crawl.config import ProcessConfig
from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.process import MATTE, process_image
from pipelines.demo.synthetic_images import encode, make_photo


def _decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.mode == "RGB"
    return np.asarray(image).astype(float)


def _refused(data: bytes, config: ProcessConfig | None = None) -> ErrorCode:
    with pytest.raises(CrawlError) as err:
        process_image(data, config or ProcessConfig())
    return err.value.code


def test_resize_keeps_aspect_and_only_shrinks(photo):
    out = process_image(encode(photo), ProcessConfig(max_side=320))
    assert (out.width, out.height, out.original_width, out.original_height) == (320, 240, 640, 480)
    big = process_image(encode(photo), ProcessConfig(max_side=2000))
    assert (big.width, big.height) == (640, 480)


def test_untouched_rgb_jpeg_keeps_its_bytes(jpeg):
    out = process_image(jpeg, ProcessConfig(max_side=1024))
    assert out.data == jpeg and out.sha256 == hashlib.sha256(jpeg).hexdigest()


def test_large_jpeg_reduced_decode_matches_full_decode():
    photo = make_photo(3, 3000, 2000)
    out = process_image(encode(photo), ProcessConfig(max_side=500))
    assert (out.width, out.height) == (500, 333)
    reference = cv2.resize(photo, (500, 333), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(_decode(out.data) - reference).mean() < 3.0


@pytest.mark.parametrize(
    "orientation, size", [(1, (64, 48)), (3, (64, 48)), (6, (48, 64)), (8, (48, 64))]
)
def test_exif_orientation_is_applied(orientation, size):
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:24, :32] = 255  # white top-left quadrant
    out = process_image(jpeg_with_orientation(pixels, orientation), ProcessConfig(min_side=8))
    decoded = _decode(out.data)
    assert (out.width, out.height) == size
    corner = {1: (0, 0), 3: (-1, -1), 6: (0, -1), 8: (-1, 0)}[orientation]
    assert decoded[corner[0], corner[1]].mean() > 200  # the white quadrant moved as EXIF says


def test_modes_convert_to_rgb():
    uniform = ProcessConfig(min_pixel_std=0)  # one-colour images are refused by default
    grad16 = (np.linspace(0, 65535, 128 * 128).reshape(128, 128)).astype(np.uint16)
    out = _decode(process_image(encode(grad16, "PNG"), ProcessConfig()).data)
    assert out[0, 0].mean() < 3 and out[-1, -1].mean() > 250  # 16-bit scaled, not clipped
    assert abs(out[64, 64].mean() - 128) < 6

    rgba = np.zeros((100, 100, 4), np.uint8)  # fully transparent: the matte colour
    out = _decode(process_image(encode(rgba, "PNG"), uniform).data)
    assert np.abs(out.mean(axis=(0, 1)) - MATTE[:3]).max() < 3

    cmyk = Image.new("CMYK", (100, 100), (0, 255, 255, 0))  # pure red
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG")
    out = _decode(process_image(buf.getvalue(), uniform).data)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 50

    palette = Image.new("P", (100, 100), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    buf = io.BytesIO()
    palette.save(buf, "PNG")
    out = _decode(process_image(buf.getvalue(), uniform).data)
    assert out[..., 2].mean() > 200 and out[..., 0].mean() < 50


def test_transparent_images_keep_what_they_show_and_blank_ones_are_refused():
    """Seven wallpapers whose alpha fades them out: over white they all came out white;
    over the matte they stay seven different images."""
    stored = []
    for i in range(7):
        rgba = np.dstack([make_photo(i, 160, 120), np.full((120, 160), 40, np.uint8)])
        rgba[:, :80, 3] = 0  # the left half fully transparent
        out = process_image(encode(rgba, "PNG"), ProcessConfig())
        stored.append(_decode(out.data))
    assert all(np.abs(s[:, :70] - MATTE[:3]).max() < 8 for s in stored)  # the matte shows
    right = [s[:, 90:].mean(axis=2) for s in stored]
    assert min(np.abs(a - b).mean() for i, a in enumerate(right) for b in right[i + 1 :]) > 2
    hidden = np.dstack([make_photo(1, 160, 120), np.zeros((120, 160), np.uint8)])
    with pytest.raises(CrawlError, match=r"near-constant image: pixel standard deviation 0.00 "
                                         r"< process.min_pixel_std 2.0"):  # fmt: skip
        process_image(encode(hidden, "PNG"), ProcessConfig())  # transparent everywhere
    noise = np.random.default_rng(0).integers(-1, 2, (120, 160, 1))
    blank = (250 + noise).repeat(3, axis=2).astype(np.uint8)  # white, with a little noise
    assert _refused(encode(blank)) == ErrorCode.NEAR_CONSTANT


def test_refusals():
    photo = make_photo(5)
    assert _refused(png_declaring(20000, 20000)) == ErrorCode.TOO_MANY_PIXELS
    assert (
        _refused(png_declaring(5000, 5000), ProcessConfig(max_pixels=1_000_000))
        == ErrorCode.TOO_MANY_PIXELS
    )
    full = encode(photo)
    assert _refused(full[: len(full) // 2]) == ErrorCode.DECODE_ERROR
    assert _refused(b"<html><body>not an image</body></html>") == ErrorCode.NOT_IMAGE
    assert _refused(b"") == ErrorCode.NOT_IMAGE
    assert (
        _refused(encode(make_photo(1, 100, 50)), ProcessConfig(min_side=64)) == ErrorCode.TOO_SMALL
    )
    assert (
        _refused(encode(make_photo(1, 500, 100)), ProcessConfig(min_side=64))
        == ErrorCode.BAD_ASPECT
    )


def test_refusal_errors_cross_process_boundaries():
    err = CrawlError(ErrorCode.TIMEOUT, "slow", http_status=200)
    back = pickle.loads(pickle.dumps(err))
    assert (back.code, back.message, back.http_status) == (ErrorCode.TIMEOUT, "slow", 200)
