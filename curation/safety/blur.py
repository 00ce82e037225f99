"""Face anonymisation: each box, widened by a margin, is pixelated to a few blocks across
and then smoothed, so that the face cannot be recognised at any size. A block count fixed
per face, not per image, is what makes the strength scale with the box: a large face
gets large blocks, a small one small blocks."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height, in pixels


def widen(box: Box, margin: float, shape: tuple[int, ...]) -> Box:
    """``box`` grown by ``margin`` of its size on every side (hair, jaw, ears), clipped."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(shape[1], x + w + dx), min(shape[0], y + h + dy)
    return x0, y0, x1 - x0, y1 - y0


def blur_boxes(image: np.ndarray, boxes: Sequence[Box], blocks: int, margin: float) -> np.ndarray:
    """A copy of ``image`` (H x W x C uint8) with every box anonymised: pixelated to
    ``blocks`` blocks along its longer side, then Gaussian-smoothed with a sigma of half a
    block so that no block edge carries detail. Empty boxes are skipped."""
    out = image.copy()
    for box in boxes:
        x, y, w, h = widen(box, margin, image.shape)
        if w < 1 or h < 1:
            continue
        block = max(w, h) / blocks
        small = (max(1, round(w / block)), max(1, round(h / block)))
        region = cv2.resize(out[y : y + h, x : x + w], small, interpolation=cv2.INTER_AREA)
        region = cv2.resize(region, (w, h), interpolation=cv2.INTER_NEAREST)
        sigma = max(block / 2, 0.5)
        out[y : y + h, x : x + w] = cv2.GaussianBlur(region, (0, 0), sigma)
    return out
