"""Geometric verification of copy-detection candidates: do two images share a planar
layout of local features (ORB keypoints, Lowe's ratio test, a RANSAC similarity
transform), directly or mirrored?

A global descriptor says two images look alike; only a copy keeps the same keypoints in
the same arrangement. Candidate pairs in a band of cosines (``verify_from`` up to
``verify_until``) are accepted when enough matches fit one transform, rejected when both
images have keypoints to spare and still do not, and left to the cosine threshold when
one of them has too few keypoints to tell (flat images, line drawings).
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

INCONCLUSIVE = -1
RATIO = 0.8  # Lowe's ratio test
RANSAC_PX = 5.0  # reprojection error, at the working side


Features = tuple[np.ndarray, np.ndarray | None]  # keypoint xy (n, 2), ORB descriptors


class GeometricVerifier:
    """Inlier counts for pairs of images read by ``read_image(row) -> bytes``."""

    def __init__(
        self,
        read_image: Callable[[int], bytes],
        side: int = 384,
        features: int = 1000,
        min_keypoints: int = 30,
        cache_images: int = 20_000,
        threads: int = 4,
    ) -> None:
        self.read_image = read_image
        self.side, self.min_keypoints, self.threads = side, min_keypoints, threads
        self.features = features
        self.cache: OrderedDict[tuple[int, bool], Features] = OrderedDict()
        self.cache_images = cache_images

    def _features(self, row: int, mirrored: bool) -> Features:
        key = (row, mirrored)
        found = self.cache.get(key)
        if found is None:
            found = self.cache[key] = self._compute(row, mirrored)
            if len(self.cache) > 2 * self.cache_images:
                self.cache.popitem(last=False)
        return found

    def _compute(self, row: int, mirrored: bool) -> Features:
        try:
            with Image.open(io.BytesIO(self.read_image(row))) as image:
                gray = np.asarray(image.convert("L"))
        except Exception as exc:  # noqa: BLE001 - an unreadable image cannot be verified
            log.warning("geometric verification: cannot read row %d: %s", row, exc)
            return np.zeros((0, 2), np.float32), None
        scale = self.side / max(gray.shape)  # small copies are enlarged: same keypoint scale
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=interpolation)
        if mirrored:
            gray = cv2.flip(gray, 1)
        keypoints, descriptors = cv2.ORB_create(self.features).detectAndCompute(gray, None)
        return np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors

    def inliers(self, a: int, b: int) -> int:
        """Matches consistent with one similarity transform, the better of b and its
        mirror image; INCONCLUSIVE when either image has too few keypoints."""
        fa = self._features(a, False)
        if len(fa[0]) < self.min_keypoints:
            return INCONCLUSIVE
        best = INCONCLUSIVE
        for mirrored in (False, True):
            fb = self._features(b, mirrored)
            if len(fb[0]) < self.min_keypoints:
                return INCONCLUSIVE
            best = max(best, _fitting_matches(fa, fb))
        return best

    def verify(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Inlier counts for the pairs (a[i], b[i]), on a few threads (OpenCV releases the
        GIL)."""
        with ThreadPoolExecutor(self.threads) as pool:
            return np.fromiter(pool.map(self.inliers, a.tolist(), b.tolist()), np.int64, len(a))


def _fitting_matches(fa: Features, fb: Features) -> int:
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(fa[1], fb[1], k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 4:
        return len(good) // 2
    src = fa[0][[m.queryIdx for m in good]]
    dst = fb[0][[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                          ransacReprojThreshold=RANSAC_PX)  # fmt: skip
    return int(mask.sum()) if mask is not None else 0


def accept_candidates(
    a: np.ndarray,
    b: np.ndarray,
    cosine: np.ndarray,
    verifier: GeometricVerifier,
    threshold: float,
    verify_until: float,
    min_inliers: int,
) -> tuple[np.ndarray, dict[str, int]]:
    """Which candidate edges are copies: cosine >= ``verify_until``; else verified with at
    least ``min_inliers``; else, when verification cannot tell, cosine > ``threshold``.
    Each undirected pair is verified once. Returns the mask and counts per outcome."""
    accept = cosine >= verify_until
    band = np.flatnonzero(~accept)
    lo, hi = np.minimum(a[band], b[band]), np.maximum(a[band], b[band])
    pairs, inverse = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)
    counts = verifier.verify(pairs[:, 0], pairs[:, 1])[inverse.reshape(-1)]
    inconclusive = counts == INCONCLUSIVE
    accept[band] = (counts >= min_inliers) | (inconclusive & (cosine[band] > threshold))
    stats = {"sure": int(len(a) - len(band)), "verified_pairs": int(len(pairs)),
             "confirmed": int((counts >= min_inliers).sum()),
             "inconclusive": int(inconclusive.sum()),
             "refuted": int(((counts >= 0) & (counts < min_inliers)).sum())}  # fmt: skip
    return accept, stats
