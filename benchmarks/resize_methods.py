"""Resize methods for the crawl's reduction step: time and fidelity, printed as JSON.

Fidelity is PSNR against Pillow's antialiased Lanczos of the same image (a photo-like
image with added near-Nyquist texture, where aliasing shows). Run for a mild reduction
(640x480 -> 512x384, what the crawl benchmark does) and a strong one (-> 1/4).

    python benchmarks/resize_methods.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
from PIL import Image

from manifests.config import describe, parse_with_quick
from pipelines.demo.synthetic_images import make_photo

METHODS = {
    "cv2_area": lambda a, im, size: cv2.resize(a, size, interpolation=cv2.INTER_AREA),
    "cv2_linear": lambda a, im, size: cv2.resize(a, size, interpolation=cv2.INTER_LINEAR),
    "cv2_cubic": lambda a, im, size: cv2.resize(a, size, interpolation=cv2.INTER_CUBIC),
    "pil_bicubic": lambda a, im, size: np.asarray(im.resize(size, Image.Resampling.BICUBIC)),
    "pil_box": lambda a, im, size: np.asarray(im.resize(size, Image.Resampling.BOX)),
}


def textured_photo() -> np.ndarray:
    a = make_photo(3).astype(np.float32)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    a += 40 * np.sin(xx * 0.9 + yy * 0.3)[..., None]
    return np.clip(a, 0, 255).astype(np.uint8)


def measure(pixels: np.ndarray, size: tuple[int, int], repeats: int) -> dict:
    image = Image.fromarray(pixels)
    reference = np.asarray(image.resize(size, Image.Resampling.LANCZOS)).astype(float)
    out = {}
    for name, method in METHODS.items():
        result = method(pixels, image, size)
        start = time.perf_counter()
        for _ in range(repeats):
            method(pixels, image, size)
        ms = 1000 * (time.perf_counter() - start) / repeats
        mse = np.mean((result.astype(float) - reference) ** 2)
        out[name] = {"ms": round(ms, 3), "psnr_db": round(10 * np.log10(255**2 / mse), 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--repeats", type=int, default=200)
    args = parse_with_quick(p, {"repeats": 3})
    cv2.setNumThreads(1)
    pixels = textured_photo()
    result = {
        "640x480_to_512x384": measure(pixels, (512, 384), args.repeats),
        "640x480_to_160x120": measure(pixels, (160, 120), args.repeats),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
