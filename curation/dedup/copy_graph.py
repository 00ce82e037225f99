"""Copy-detection graphs on L2-normalized descriptors with faiss: k nearest neighbours,
edges above a cosine threshold, delivered chunk by chunk for a streaming union-find."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np

from curation.dedup.verify import CopyCriteria
from curation.index import SearchConfig, build_search_index
from manifests.config import bounded

log = logging.getLogger(__name__)


PAPER_COPY_SETTINGS = {"normalize": "none", "threshold": 0.6, "relative_threshold": 0.45,
                       "verify": False}  # fmt: skip
NORMALIZATIONS = ("none", "center", "whiten")


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
    exact_max: int = 200_000  # larger pools use an IVF index
    nprobe: int = bounded(16, at_least=1)
    # queries per search call: the edge stream's granularity
    chunk: int = bounded(20_000, at_least=1)
    use_gpu: bool = True  # when faiss sees a GPU

    @property
    def criteria(self) -> CopyCriteria:
        return CopyCriteria(self.min_inliers, self.min_inlier_fraction, self.max_residual_px,
                            self.min_coverage, self.min_keypoint_share,
                            self.min_inliers_floor)  # fmt: skip

    def ivf_factory(self, n: int) -> str:
        """The faiss index of a pool of ``n`` beyond ``exact_max``: 4 sqrt(n) cells, flat
        codes (the graph needs true cosines, so no PQ)."""
        return f"IVF{max(1, int(4 * math.sqrt(n)))},Flat"

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


class DescriptorSpace:
    """Where cosine similarities are taken, fitted on the pool's descriptors.

    ``none``: L2-normalized as they are (SSCD's own space, where the paper's thresholds
    hold). ``center``: minus the pool mean (pooled CNN features are all positive, so
    unrelated images sit at cosine 0.5 or more). ``whiten``: PCA whitening to
    ``whiten_dim`` dimensions (faiss.PCAMatrix, eigenvalue power -0.5), which damps the
    few directions that say what an image shows and keeps those that say which image it
    is; it needs more pool images than dimensions, else it falls back to ``center``.
    """

    def __init__(self, mode: str, whiten_dim: int = 256) -> None:
        self.mode, self.whiten_dim = mode, whiten_dim
        self.mean: np.ndarray | None = None
        self.pca: faiss.PCAMatrix | None = None

    def fit(self, vectors: np.ndarray, sample: int = 200_000) -> DescriptorSpace:
        x = np.asarray(vectors, dtype=np.float32)
        if self.mode == "whiten" and len(x) <= self.whiten_dim:
            log.warning("whitening needs more than %d descriptors, got %d: centring instead",
                        self.whiten_dim, len(x))  # fmt: skip
            self.mode = "center"
        if self.mode == "center":
            self.mean = x.mean(axis=0)
        elif self.mode == "whiten":
            chosen = np.random.default_rng(0).choice(len(x), min(sample, len(x)), replace=False)
            self.pca = faiss.PCAMatrix(x.shape[1], min(self.whiten_dim, x.shape[1]), -0.5)
            self.pca.train(np.ascontiguousarray(x[np.sort(chosen)]))
        return self

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.mean is not None:
            x = np.ascontiguousarray(x - self.mean)
        if self.pca is not None:
            x = self.pca.apply(x)
        faiss.normalize_L2(x)
        return x


def build_index(base: np.ndarray, config: CopyGraphConfig) -> faiss.Index:
    """Exact inner-product search up to ``exact_max`` vectors, IVF beyond; on all GPUs
    when faiss sees one."""
    search = SearchConfig(exact_max=config.exact_max, factory=config.ivf_factory(len(base)),
                          nprobe=config.nprobe, use_gpu=config.use_gpu)  # fmt: skip
    return build_search_index(base, search)


def knn_edges(
    vectors: np.ndarray, config: CopyGraphConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Chunks of edges (i, j, cosine), i != j, between each vector and its k nearest
    neighbours with cosine above ``config.threshold``."""
    index = build_index(vectors, config)
    k = min(config.k + 1, len(vectors))  # +1: a vector finds itself
    yield from _edges(index, vectors, k, config.threshold, config.chunk, self_search=True)


def cross_edges(
    queries: np.ndarray, base: np.ndarray, k: int, threshold: float, config: CopyGraphConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Chunks of edges (query row, base row, cosine) above ``threshold``."""
    index = build_index(base, config)
    yield from _edges(index, queries, min(k, len(base)), threshold, config.chunk, self_search=False)


def _edges(
    index: faiss.Index, queries: np.ndarray, k: int, threshold: float, chunk: int, self_search: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    for start in range(0, len(queries), chunk):
        sims, found = index.search(queries[start : start + chunk], k)
        rows = np.arange(start, start + len(sims))[:, None].repeat(k, axis=1)
        keep = (sims > threshold) & (found >= 0)
        if self_search:
            keep &= found != rows
        yield rows[keep], found[keep], sims[keep]
