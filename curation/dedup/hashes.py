"""Per-image hashes and Hamming-radius grouping.

- sha256 of the stored bytes: exact duplicates.
- pHash (imagehash, 64 bits): DCT of a 32x32 grayscale image; robust to re-encoding,
  resizing and mild colour changes.
- PCA hash (64 bits): the signs of the top principal components of a 16x16 grayscale
  thumbnail, each thumbnail standardized (zero mean, unit variance) so that brightness
  and contrast changes cancel. It is learned on pixels, not on embeddings, because in the
  recipe hash dedup runs on the raw pool before any model sees it, and a thumbnail costs
  256 bytes and no GPU at the scale of a billion images.
"""

from __future__ import annotations

import hashlib
from typing import Any

import faiss
import imagehash
import numpy as np
from PIL import Image, ImageOps

from manifests.image_rows import open_image

THUMB_SIDE = 16


def image_hashes(data: bytes, max_pixels: int = 100_000_000) -> dict[str, Any]:
    """sha256, pHash (signed int64), 16x16 grayscale thumbnail bytes, and pixel count."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    with open_image(data) as image:
        pixels = image.width * image.height
        image = ImageOps.exif_transpose(image).convert("RGB")
        phash = imagehash.phash(image).hash.flatten()
        thumb = image.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "phash": int(np.packbits(phash).view(">i8")[0]),
        "thumb": thumb.tobytes(),
        "pixels": pixels,
    }


def int64_codes(values: np.ndarray) -> np.ndarray:
    """Signed 64-bit hashes -> (n, 8) uint8 codes, as faiss binary indexes take them."""
    return np.ascontiguousarray(np.asarray(values, dtype=">i8")).view(np.uint8).reshape(-1, 8)


def standardized_thumbs(thumbs: list[bytes]) -> np.ndarray:
    x = np.frombuffer(b"".join(thumbs), np.uint8).reshape(len(thumbs), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True) + 1.0  # +1: flat images stay near zero, not noise
    return x


class PCAHash:
    """Sign bits of a PCA projection of standardized thumbnails (faiss.PCAMatrix)."""

    def __init__(self, bits: int = 64) -> None:
        self.bits = bits
        self.pca: faiss.PCAMatrix | None = None

    def fit(self, thumbs: list[bytes], sample: int = 100_000, seed: int = 0) -> PCAHash:
        if len(thumbs) < self.bits:
            raise ValueError(f"a {self.bits}-bit PCA hash needs at least {self.bits} thumbnails "
                             f"to fit, got {len(thumbs)}")  # fmt: skip
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(thumbs), size=min(sample, len(thumbs)), replace=False)
        x = standardized_thumbs([thumbs[i] for i in np.sort(chosen)])
        self.pca = faiss.PCAMatrix(x.shape[1], self.bits)
        self.pca.train(x)
        return self

    def codes(self, thumbs: list[bytes]) -> np.ndarray:
        """(n, bits / 8) uint8 codes for faiss binary indexes."""
        if self.pca is None:
            raise RuntimeError("PCAHash.codes before fit")
        projected = self.pca.apply(standardized_thumbs(thumbs))
        return np.packbits(projected > 0, axis=1)


def hamming_pairs(
    codes: np.ndarray, radius: int, flat_max: int = 200_000, chunk: int = 50_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of codes within Hamming distance ``radius``, and their distances.

    Up to ``flat_max`` codes: brute force (IndexBinaryFlat). Beyond: multi-index hashing
    (IndexBinaryMultiHash) with radius + 1 substrings, exact by the pigeonhole principle:
    codes within ``radius`` bits agree exactly on at least one of radius + 1 substrings.
    """
    n, nbytes = codes.shape
    bits = nbytes * 8
    if n <= flat_max:
        index = faiss.IndexBinaryFlat(bits)
    else:
        n_hash = radius + 1
        index = faiss.IndexBinaryMultiHash(bits, n_hash, bits // n_hash)
    index.add(codes)
    firsts, seconds, distances = [], [], []
    for start in range(0, n, chunk):
        lims, bits_apart, found = index.range_search(codes[start : start + chunk], radius + 1)
        queries = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = queries < found
        firsts.append(queries[keep])
        seconds.append(found[keep])
        distances.append(bits_apart[keep].astype(np.int32))
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances)
