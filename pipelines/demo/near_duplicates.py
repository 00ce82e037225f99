"""Edited copies of an image, as copy detection must find them: re-compression, resizing,
cropping, colour changes, flips, overlaid text, borders, rotation, blur and grayscale. Used
by the demo, the tests and ``benchmarks/dedup_quality.py``."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]


def _jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=int(rng.integers(20, 40)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _resize(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(0.3, 0.6)
    return image.resize((round(image.width * scale), round(image.height * scale)))


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    keep = rng.uniform(0.75, 0.9)  # of each side
    w, h = round(image.width * keep), round(image.height * keep)
    left, top = rng.integers(0, image.width - w + 1), rng.integers(0, image.height - h + 1)
    return image.crop((int(left), int(top), int(left) + w, int(top) + h))


def _colour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.5, 1.5))


def _flip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.mirror(image)


def _text(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = image.copy()
    draw = ImageDraw.Draw(out)
    size = max(12, image.height // 10)
    y = int(rng.integers(0, max(1, image.height - 2 * size)))
    draw.text((image.width // 20, y), "COPYRIGHT 2026", fill=(255, 255, 255),
              font_size=size, stroke_width=2, stroke_fill=(0, 0, 0))  # fmt: skip
    return out


def _border(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width = max(2, round(min(image.size) * rng.uniform(0.04, 0.1)))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    return ImageOps.expand(image, border=width, fill=colour)


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(5, 15) * rng.choice([-1, 1])
    return image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0))


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5)))


def _grayscale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


TRANSFORMS: dict[str, Transform] = {
    "jpeg": _jpeg, "resize": _resize, "crop": _crop, "colour": _colour, "flip": _flip,
    "text": _text, "border": _border, "rotate": _rotate, "blur": _blur, "grayscale": _grayscale,
}  # fmt: skip


def edited_copy(image: Image.Image, name: str, seed: int) -> Image.Image:
    """``image`` changed by the named transform, deterministic in ``seed``."""
    return TRANSFORMS[name](image.convert("RGB"), np.random.default_rng(seed))
