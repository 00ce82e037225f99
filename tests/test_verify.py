"""Geometric verification on real photos: edited copies keep their keypoint layout,
different photos do not, and featureless images are left to the cosine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from builders import jpeg_bytes, skimage_photos
from curation.dedup.verify import INCONCLUSIVE, GeometricVerifier, accept_candidates
from pipelines.near_duplicates import edited_copy

MIN_INLIERS = 60  # CopyGraphConfig's default


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    photos = skimage_photos(384)
    astronaut, coffee, chelsea = photos["astronaut"], photos["coffee"], photos["chelsea"]
    flat = Image.new("RGB", (300, 200), (120, 160, 200))
    return [jpeg_bytes(i) for i in (
        astronaut,                                    # 0
        edited_copy(astronaut, "crop", 1),            # 1
        edited_copy(astronaut, "flip", 2),            # 2
        edited_copy(astronaut, "resize", 3),          # 3
        edited_copy(astronaut, "text", 4),            # 4
        coffee,                                       # 5
        chelsea,                                      # 6
        flat,                                         # 7
    )]  # fmt: skip


@pytest.fixture(scope="module")
def verifier(images) -> GeometricVerifier:
    return GeometricVerifier(lambda row: images[row])


@pytest.mark.parametrize("copy", [1, 2, 3, 4])
def test_an_edited_copy_keeps_its_keypoint_layout(verifier, copy):
    assert verifier.inliers(0, copy) >= MIN_INLIERS


@pytest.mark.parametrize("other", [5, 6])
def test_different_photos_do_not_share_one(verifier, other):
    assert 0 <= verifier.inliers(0, other) < MIN_INLIERS


def test_a_featureless_image_is_inconclusive(verifier):
    assert verifier.inliers(0, 7) == INCONCLUSIVE == verifier.inliers(7, 0)


def test_candidates_are_accepted_by_cosine_verification_or_fallback(verifier):
    a = np.array([0, 1, 0, 0, 0, 0, 7])
    b = np.array([5, 0, 1, 5, 7, 7, 0])
    cosine = np.array([0.95, 0.55, 0.55, 0.8, 0.8, 0.6, 0.8])
    keep, stats = accept_candidates(a, b, cosine, verifier, threshold=0.72, verify_until=0.9,
                                    min_inliers=MIN_INLIERS)  # fmt: skip
    # sure by cosine | verified copy, both directions | refuted despite a high cosine |
    # inconclusive: above the threshold, below it, and the same pair the other way round
    assert keep.tolist() == [True, True, True, False, True, False, True]
    assert stats == {"sure": 1, "verified_pairs": 3, "confirmed": 2, "inconclusive": 3,
                     "refuted": 1}  # fmt: skip
