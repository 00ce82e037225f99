"""The copy-detection graph's settings: thresholds, verification and its kNN search
(:mod:`curation.sharded_search`) in the space of :mod:`curation.descriptor_space`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from curation.dedup.verify import CopyCriteria
from curation.descriptor_space import NORMALIZATIONS
from curation.index import IndexSettings
from manifests.config import bounded

log = logging.getLogger(__name__)


PAPER_COPY_SETTINGS = {"normalize": "none", "threshold": 0.6, "relative_threshold": 0.45,
                       "verify": False}  # fmt: skip


@dataclass
class CopyGraphConfig:
    """Unset (null) thresholds and normalization come from the embedding model's
    recommendation in ``embed.json`` (see curation.embed), else the paper's SSCD values."""

    k: int = bounded(64, at_least=1)
    # cosine of a self-dedup edge (paper: 0.6)
    threshold: float | None = bounded(None, at_least=-1, at_most=1)
    # cosine to an evaluation image (paper: 0.45)
    relative_threshold: float | None = bounded(None, at_least=-1, at_most=1)
    normalize: str | None = None  # none | center | whiten (see DescriptorSpace)
    # geometric verification (curation.dedup.verify) of candidates with cosine in
    # [verify_from, verify_until); null: the model's recommendation (the paper: off).
    # A verified copy has min_inliers matches (or, for an image with few keypoints,
    # min_keypoint_share of them, at least min_inliers_floor; and min_inlier_fraction of
    # the matches) on one similarity transform, fitting it to a median max_residual_px
    # (see verify.Fit) and spanning min_coverage of the keypoints' hull, with
    # verify_features ORB keypoints per image; chosen with benchmarks/dedup_quality.py
    verify: bool | None = None
    verify_from: float = 0.25
    verify_until: float = 0.9
    # per image, its nearest candidates below verify_until that are verified (a pair is
    # seen from both sides): verification costs tens of ms a pair, the kNN list is k long
    verify_top: int = bounded(8, at_least=1)
    min_inliers: int = bounded(40, at_least=2)
    min_keypoint_share: float = bounded(0.3, at_least=0, at_most=1)
    min_inliers_floor: int = bounded(15, at_least=2)
    verify_features: int = bounded(2000, at_least=100)  # ORB keypoints per image
    min_inlier_fraction: float = 0.7
    max_residual_px: float = 1.0
    min_coverage: float = 0.35
    whiten_dim: int = bounded(256, at_least=1)
    # the kNN search (curation.sharded_search): exact up to exact_max unique images;
    # beyond, IVF with list_size descriptors per list (an HNSW coarse quantizer on CPUs),
    # nprobe lists searched, trained on train_per_list descriptors per list
    exact_max: int = bounded(200_000, at_least=0)
    list_size: int = bounded(1024, at_least=1)
    nprobe: int = bounded(16, at_least=1)
    train_per_list: int = bounded(64, at_least=1)
    part_vectors: int = bounded(2_000_000, at_least=1)  # descriptors one search task holds
    space_sample: int = bounded(200_000, at_least=1)  # descriptors normalize is fitted on
    chunk: int = bounded(16_384, at_least=1)  # queries per search call
    use_gpu: bool = True  # when faiss sees a GPU

    @property
    def criteria(self) -> CopyCriteria:
        return CopyCriteria(self.min_inliers, self.min_inlier_fraction, self.max_residual_px,
                            self.min_coverage, self.min_keypoint_share,
                            self.min_inliers_floor)  # fmt: skip

    @property
    def index(self) -> IndexSettings:
        """The search index: flat codes (the graph needs true cosines, so no PQ)."""
        return IndexSettings(exact_max=self.exact_max, list_size=self.list_size, codes="Flat",
                             nprobe=self.nprobe, train_per_list=self.train_per_list,
                             part_vectors=self.part_vectors, batch=self.chunk,
                             use_gpu=self.use_gpu)  # fmt: skip

    def resolved(self, recommended: dict[str, Any] | None) -> CopyGraphConfig:
        """A copy with every unset setting filled in from ``recommended``, else the paper's."""
        settings = PAPER_COPY_SETTINGS | (recommended or {})
        out = replace(self)
        for key in PAPER_COPY_SETTINGS:
            if getattr(out, key) is None:
                setattr(out, key, settings[key])
        if out.normalize not in NORMALIZATIONS:
            raise ValueError(f"copy.normalize {out.normalize!r}: expected one of {NORMALIZATIONS}")
        return out
