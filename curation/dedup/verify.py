"""Geometric verification of copy-detection candidates: do two images share a planar
layout of local features (ORB keypoints, Lowe's ratio test, a RANSAC similarity
transform), directly or mirrored?

A global descriptor says two images look alike; only a copy keeps the same keypoints in
the same arrangement. Candidate pairs in a band of cosines (``verify_from`` up to
``verify_until``) are accepted when their matches fit one transform, rejected when both
images have keypoints to spare and they do not, and left to the cosine threshold when
one of them has too few keypoints to tell (flat images, line drawings).

Fitting is not enough on its own; two kinds of different images fit too, and
:class:`CopyCriteria` refuses them:
- two photographs of one 3D scene (a stereo pair, views of a calibration target): the
  matches on one depth plane fit a similarity, but only roughly and only those, while
  almost all of a copy's matches fit it to within keypoint noise; so most matches must
  be inliers and their median residual must be small;
- two different images under the same caption, watermark or logo: the caption's
  keypoints fit exactly, but they cover a strip, so the inliers' convex hull must cover a
  good part of the area where one of the images has keypoints (the larger of the two
  fractions, so a crop, whose keypoints all match, passes).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from manifests.image_rows import open_image

log = logging.getLogger(__name__)

INCONCLUSIVE = -1
RATIO = 0.8  # Lowe's ratio test
RANSAC_PX = 5.0  # reprojection error, at the working side


class Features(NamedTuple):
    xy: np.ndarray  # keypoint positions (n, 2) at the working side
    descriptors: np.ndarray | None  # ORB
    enlarged: float  # how much the image was enlarged to the working side (>= 1)
    hull_area: float  # of all keypoints: what an inlier hull's coverage is measured against


@dataclass(frozen=True)
class Fit:
    """How the matched keypoints of two images fit one similarity transform."""

    inliers: int  # matches within RANSAC_PX; INCONCLUSIVE: too few keypoints to tell
    inlier_fraction: float = 0.0  # of the matches that pass the ratio test
    residual_px: float = math.inf  # the inliers' median distance from the transform *
    coverage: float = 0.0  # inliers' convex hull / all keypoints', the larger of the two
    keypoints: int = 0  # of the image with fewer

    # * in working-side pixels divided by the larger enlargement of the two images: an
    # enlarged image's keypoints are that much less precise

    @property
    def conclusive(self) -> bool:
        return self.inliers != INCONCLUSIVE


@dataclass(frozen=True)
class CopyCriteria:
    """When a conclusive :class:`Fit` makes two images copies. The dedup stage's come
    from its ``copy`` settings."""

    min_inliers: int
    min_inlier_fraction: float
    max_residual_px: float
    min_coverage: float
    # an image with few keypoints (a small object on a plain background) cannot give
    # min_inliers: this share of its keypoints will do, down to a floor
    min_keypoint_share: float = 1.0
    min_inliers_floor: int = 40

    def inliers_needed(self, keypoints: int) -> int:
        share = int(math.ceil(self.min_keypoint_share * keypoints))
        return max(self.min_inliers_floor, min(self.min_inliers, share))

    def holds(self, fit: Fit) -> bool:
        return (
            fit.inliers >= self.inliers_needed(fit.keypoints)
            and fit.inlier_fraction >= self.min_inlier_fraction
            and fit.residual_px <= self.max_residual_px
            and fit.coverage >= self.min_coverage
        )


class GeometricVerifier:
    """Fits of pairs of images read by ``read_image(row) -> bytes``."""

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
            with open_image(self.read_image(row)) as image:
                gray = np.asarray(image.convert("L"))
        except Exception as exc:  # noqa: BLE001 - an unreadable image cannot be verified
            log.warning("geometric verification: cannot read row %d: %s", row, exc)
            return Features(np.zeros((0, 2), np.float32), None, 1.0, 0.0)
        scale = self.side / max(gray.shape)  # small copies are enlarged: same keypoint scale
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=interpolation)
        if mirrored:
            gray = cv2.flip(gray, 1)
        keypoints, descriptors = cv2.ORB_create(self.features).detectAndCompute(gray, None)
        xy = np.float32([k.pt for k in keypoints]).reshape(-1, 2)
        return Features(xy, descriptors, max(1.0, scale), _hull_area(xy))

    def fit(self, a: int, b: int) -> Fit:
        """The fit of a's matches to b or its mirror image, whichever has more inliers;
        inconclusive when either image has too few keypoints."""
        fa = self._features(a, False)
        if len(fa.xy) < self.min_keypoints:
            return Fit(INCONCLUSIVE)
        fits = []
        for mirrored in (False, True):
            fb = self._features(b, mirrored)
            if len(fb.xy) < self.min_keypoints:
                return Fit(INCONCLUSIVE)
            fits.append(_fit(fa, fb))
        return max(fits, key=lambda f: f.inliers)

    def verify(self, a: np.ndarray, b: np.ndarray) -> list[Fit]:
        """Fits of the pairs (a[i], b[i]), on a few threads (OpenCV releases the GIL)."""
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(self.fit, a.tolist(), b.tolist()))


def _fit(fa: Features, fb: Features) -> Fit:
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(fa.descriptors, fb.descriptors, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 4:
        return Fit(len(good) // 2)
    src = fa.xy[[m.queryIdx for m in good]]
    dst = fb.xy[[m.trainIdx for m in good]]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                  ransacReprojThreshold=RANSAC_PX)  # fmt: skip
    if transform is None or not mask.any():  # no inliers: nothing to take a median of
        return Fit(0)
    inlier = mask.ravel().astype(bool)
    src, dst = src[inlier], dst[inlier]
    residuals = np.linalg.norm(src @ transform[:, :2].T + transform[:, 2] - dst, axis=1)
    residual = float(np.median(residuals)) / max(fa.enlarged, fb.enlarged)
    coverage = max(_hull_area(src) / fa.hull_area, _hull_area(dst) / fb.hull_area)
    keypoints = min(len(fa.xy), len(fb.xy))
    return Fit(int(inlier.sum()), float(inlier.mean()), residual, coverage, keypoints)


def _hull_area(points: np.ndarray) -> float:
    if len(points) < 3:
        return 0.0
    return max(1.0, float(cv2.contourArea(cv2.convexHull(points))))


def accept_candidates(
    a: np.ndarray,
    b: np.ndarray,
    cosine: np.ndarray,
    verifier: GeometricVerifier,
    threshold: float,
    verify_until: float,
    criteria: CopyCriteria,
) -> tuple[np.ndarray, dict[str, int]]:
    """Which candidate edges are copies: cosine >= ``verify_until``; else a fit that meets
    ``criteria``; else, when verification cannot tell, cosine > ``threshold``. Each
    undirected pair is verified once. Returns the mask and counts per outcome (per edge)."""
    accept = cosine >= verify_until
    band = np.flatnonzero(~accept)
    lo, hi = np.minimum(a[band], b[band]), np.maximum(a[band], b[band])
    pairs, inverse = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)
    fits = verifier.verify(pairs[:, 0], pairs[:, 1])
    copies = np.array([criteria.holds(f) for f in fits], bool)[inverse.reshape(-1)]
    inconclusive = np.array([not f.conclusive for f in fits], bool)[inverse.reshape(-1)]
    accept[band] = copies | (inconclusive & (cosine[band] > threshold))
    stats = {"sure": int(len(a) - len(band)), "verified_pairs": int(len(pairs)),
             "confirmed": int(copies.sum()), "inconclusive": int(inconclusive.sum()),
             "refuted": int((~copies & ~inconclusive).sum())}  # fmt: skip
    return accept, stats
