"""Photo-like generated images for the demo, tests and benchmarks (no downloads needed).

Smooth low-frequency colour fields with a few shapes and sensor-like noise compress like
photographs (tens of KB per 640x480 JPEG), unlike flat colours or white noise.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


def make_photo(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    """An HxWx3 uint8 RGB image, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    grid = rng.uniform(0, 255, size=(4, 5, 3)).astype(np.float32)
    img = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(3, 8)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (
            int(rng.integers(width // 20, width // 4)),
            int(rng.integers(height // 20, height // 4)),
        )
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "JPEG", **params) -> bytes:
    """Encode with Pillow: ``fmt`` is JPEG, PNG, WEBP, GIF, ..."""
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "GIF":
        image = image.convert("P")
    image.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}) | params)
    return buf.getvalue()
