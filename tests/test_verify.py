"""Geometric verification on real photos: edited copies keep their keypoint layout, and
different photos do not, even two views of one scene (a stereo pair; two planes moving
apart) or two images under one caption; featureless images are left to the cosine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image, ImageDraw

from builders import jpeg_bytes, skimage_photos
from curation.dedup.copy_graph import CopyGraphConfig
from curation.dedup.verify import INCONCLUSIVE, Fit, GeometricVerifier, accept_candidates
from pipelines.demo.near_duplicates import edited_copy

DEFAULTS = CopyGraphConfig()  # the stage's
CRITERIA = DEFAULTS.criteria


def _skimage(name: str) -> Image.Image:
    image = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
    image.thumbnail((384, 384))
    return image


def _captioned_shape(ellipse: bool) -> Image.Image:
    """A black shape on white under the caption every text copy carries: the caption
    holds most of the keypoints."""
    image = Image.new("RGB", (384, 288), "white")
    draw = ImageDraw.Draw(image)
    (draw.ellipse if ellipse else draw.rectangle)((150, 40, 300, 160), fill="black")
    return edited_copy(image, "text", 0)  # same seed: same caption, same place


def _small_object(photos: dict[str, Image.Image]) -> Image.Image:
    """A small object on a plain background: few keypoints to match."""
    image = Image.new("RGB", (384, 288), (90, 140, 120))
    thing = photos["rocket"].copy()
    thing.thumbnail((24, 24))
    image.paste(thing, (200, 150))
    return image


def _two_planes(photos: dict[str, Image.Image], shift: int) -> Image.Image:
    """A view of a near photo (camera) before a far one (astronaut): moving the viewpoint
    shifts the near plane by ``shift`` and the far one by a third of it."""
    view = photos["astronaut"].crop((shift // 3, 0, shift // 3 + 384, 288))
    view.paste(photos["camera"].resize((110, 110)), (40 + shift, 60))
    return view


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    photos = skimage_photos(384)
    large = skimage_photos(512)
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
        _skimage("motorcycle_left.png"),              # 8: a stereo pair
        _skimage("motorcycle_right.png"),             # 9
        _captioned_shape(ellipse=True),               # 10: one caption, two images
        _captioned_shape(ellipse=False),              # 11
        _two_planes(large, 0),                        # 12: two planes, two views
        _two_planes(large, 72),                       # 13
        _small_object(photos),                        # 14: a small object ...
        edited_copy(_small_object(photos), "resize", 5),  # 15: ... and its copy
    )]  # fmt: skip


@pytest.fixture(scope="module")
def verifier(images) -> GeometricVerifier:
    return GeometricVerifier(lambda row: images[row], features=DEFAULTS.verify_features)


@pytest.mark.parametrize("copy", [1, 2, 3, 4])
def test_an_edited_copy_keeps_its_keypoint_layout(verifier, copy):
    fit = verifier.fit(0, copy)
    assert CRITERIA.holds(fit), fit


@pytest.mark.parametrize("other", [5, 6])
def test_different_photos_do_not_share_one(verifier, other):
    fit = verifier.fit(0, other)
    assert fit.conclusive and fit.inliers < CRITERIA.min_inliers, fit


def test_two_views_of_one_scene_fit_only_roughly(verifier):
    """Many matches of a stereo pair fit one similarity, but not to keypoint noise."""
    fit = verifier.fit(8, 9)
    assert fit.inliers >= CRITERIA.min_inliers and fit.coverage >= CRITERIA.min_coverage, fit
    assert fit.residual_px > CRITERIA.max_residual_px and not CRITERIA.holds(fit)


def test_two_planes_each_fit_but_neither_fits_most_matches(verifier):
    fit = verifier.fit(12, 13)
    assert fit.inliers >= CRITERIA.min_inliers and fit.residual_px <= CRITERIA.max_residual_px
    assert fit.coverage >= CRITERIA.min_coverage, fit
    assert fit.inlier_fraction < CRITERIA.min_inlier_fraction and not CRITERIA.holds(fit)


def test_a_shared_caption_is_not_a_shared_image(verifier):
    """The caption's keypoints fit exactly, but cover a strip of the images."""
    fit = verifier.fit(10, 11)
    assert fit.inliers >= CRITERIA.min_inliers and fit.residual_px <= CRITERIA.max_residual_px
    assert fit.coverage < CRITERIA.min_coverage and not CRITERIA.holds(fit), fit


def test_a_small_object_with_few_keypoints_is_verified_by_their_share(verifier):
    fit = verifier.fit(14, 15)
    assert fit.conclusive and fit.inliers < CRITERIA.min_inliers, fit  # too few for the rule
    assert fit.inliers >= CRITERIA.inliers_needed(fit.keypoints) and CRITERIA.holds(fit), fit


def test_the_inliers_needed_scale_with_the_keypoints_between_floor_and_rule():
    assert CRITERIA.inliers_needed(10_000) == CRITERIA.min_inliers
    assert CRITERIA.inliers_needed(0) == CRITERIA.min_inliers_floor
    few = int(CRITERIA.min_inliers / CRITERIA.min_keypoint_share) - 10
    assert CRITERIA.min_inliers_floor < CRITERIA.inliers_needed(few) < CRITERIA.min_inliers


def test_a_featureless_image_is_inconclusive(verifier):
    assert verifier.fit(0, 7) == Fit(INCONCLUSIVE) == verifier.fit(7, 0)


def test_candidates_are_accepted_by_cosine_verification_or_fallback(verifier):
    a = np.array([0, 1, 0, 0, 0, 0, 7, 8])
    b = np.array([5, 0, 1, 5, 7, 7, 0, 9])
    cosine = np.array([0.95, 0.55, 0.55, 0.8, 0.8, 0.6, 0.8, 0.8])
    keep, stats = accept_candidates(a, b, cosine, verifier, threshold=0.72, verify_until=0.9,
                                    criteria=CRITERIA)  # fmt: skip
    # sure by cosine | verified copy, both directions | refuted despite a high cosine |
    # inconclusive: above the threshold, below it, and the same pair the other way round |
    # refuted: a stereo pair
    assert keep.tolist() == [True, True, True, False, True, False, True, False]
    assert stats == {"sure": 1, "verified_pairs": 4, "confirmed": 2, "inconclusive": 3,
                     "refuted": 2}  # fmt: skip
