"""Hierarchical k-means with resampling (Vo et al. 2024, "Automatic Data Curation for
Self-Supervised Learning: A Clustering-Based Approach"; DINOv3's LVD-1689M), in one
process. The pool's first level runs as shard tasks (:mod:`curation.sharded_hierarchy`)
through the same steps.

Level 1 is k-means over the pool's vectors, level l k-means over level l-1's centroids
(squared L2 on the vectors as stored, k-means++ seeding). Flat k-means puts centroids
where the data is dense (its centroid density follows the data's density to the power
d/(d+2)); each level above flattens that further, and resampling moves each level's
centroids off the dense modes: n times, the ``r`` points closest to each centroid are
taken (a subset in which every cluster weighs the same), k-means reruns on that subset
with the same k, and every point of the level is reassigned. Balanced sampling
(:mod:`curation.balanced_sampling`) then draws the same number of images from every
branch of the tree.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from curation.index import gpu_count
from curation.sharded_search import ranks
from curation.vector_shards import sample_rows
from manifests.config import ConfigError, bounded

log = logging.getLogger(__name__)


@dataclass
class LevelConfig:
    k: int = bounded(1000, at_least=1, at_most=1_000_000_000)
    resampling_steps: int = bounded(10, at_least=0)  # n; the paper's web recipe: 10
    # r, the points kept per centroid in a resampling step; None: half the level's mean
    # cluster size (the paper's rule), at least 1
    resample_size: int | None = bounded(None, at_least=1)


@dataclass
class HierarchyConfig:
    """The levels bottom-up (k shrinking), and how each k-means runs."""

    levels: list[LevelConfig] = field(default_factory=lambda: [LevelConfig(1000), LevelConfig(100)])
    niter: int = bounded(50, at_least=1)  # Lloyd iterations (the reference code's 50)
    nredo: int = bounded(1, at_least=1)  # k-means++ starts; the lowest objective wins
    # k-means++ seeds on a sample of k x this many points (its cost grows with k^2 x this)
    init_points_per_centroid: int | None = bounded(16, at_least=1)
    # level 1 and every resampling step fit on a sample of k x this many points (None: all)
    max_points_per_centroid: int | None = bounded(256, at_least=1)
    # a level of n points is cut into at most n // this many clusters
    min_cluster_size: int = bounded(8, at_least=1)
    seed: int = 0
    use_gpu: bool = True

    def validate(self) -> None:
        if not self.levels:
            raise ConfigError("hierarchy.levels: at least one level is required")
        ks = [level.k for level in self.levels]
        if any(upper > lower for lower, upper in zip(ks, ks[1:], strict=False)):
            raise ConfigError(f"hierarchy.levels: k must not grow from one level to the next "
                              f"(found {ks})")  # fmt: skip

    def sized(self, n: int) -> list[LevelConfig]:
        """The levels for a pool of ``n``: each k cut to what the level below fills with
        clusters of ``min_cluster_size`` (said in a warning), and r resolved."""
        levels, points = [], n
        for position, level in enumerate(self.levels, 1):
            k = max(1, min(level.k, points // self.min_cluster_size))
            if k < level.k:
                log.warning("hierarchy level %d: k=%d cut to %d (%d points fill at most %d "
                            "clusters of min_cluster_size=%d)", position, level.k, k, points, k,
                            self.min_cluster_size)  # fmt: skip
            r = level.resample_size or max(1, points // k // 2)
            levels.append(LevelConfig(k, level.resampling_steps, r))
            points = k
        return levels

    def fit_size(self, k: int, n: int) -> int:
        """How many of ``n`` points a k-means of ``k`` clusters is fitted on."""
        per = self.max_points_per_centroid
        return n if per is None else min(n, k * per)

    def step_seed(self, level: int, step: int) -> int:
        """The seed of level ``level``'s k-means at resampling step ``step`` (0: the first
        fit)."""
        return self.seed * 1_000_003 + level * 1_009 + step


@dataclass
class Level:
    """One level: its centroids, and for each member of the level below (pool vectors
    for level 1) its cluster and squared distance to that cluster's centroid."""

    centroids: np.ndarray
    assignment: np.ndarray
    distance: np.ndarray

    @property
    def k(self) -> int:
        return len(self.centroids)


@dataclass
class Hierarchy:
    levels: list[Level]  # bottom-up

    def counts(self, drawn: np.ndarray | None = None) -> list[np.ndarray]:
        """Pool vectors (or draws, ``drawn`` per pool vector) under each cluster of each
        level, bottom-up."""
        first = self.levels[0]
        counts = [np.bincount(first.assignment, weights=drawn, minlength=first.k)]
        for level in self.levels[1:]:
            counts.append(np.bincount(level.assignment, weights=counts[-1], minlength=level.k))
        return [np.rint(c).astype(np.int64) for c in counts]


def squared_distances(
    x: np.ndarray, y: np.ndarray, x_norms: np.ndarray | None = None
) -> np.ndarray:
    """(len(x), len(y)) squared L2 distances, clipped at 0 (``x_norms``: x's squared norms)."""
    x_norms = (x * x).sum(1) if x_norms is None else x_norms
    return np.maximum(x_norms[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0)


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k seeds by greedy k-means++ (Arthur & Vassilvitskii 2007, with 2 + ln k candidates
    a step, the one that lowers the potential most kept): returns their rows of ``x``."""
    n = len(x)
    norms = (x * x).sum(1)
    trials = 2 + int(math.log(k))
    chosen = [int(rng.integers(n))]
    closest = squared_distances(x, x[chosen], norms)[:, 0]
    for _ in range(1, k):
        total = closest.sum(dtype=np.float64)
        if total <= 0:  # every point sits on a seed: the rest are duplicates
            left = np.setdiff1d(np.arange(n), chosen)
            chosen += rng.choice(left, k - len(chosen), replace=False).tolist()
            break
        cumulative = np.cumsum(closest, dtype=np.float64)
        picks = np.searchsorted(cumulative, rng.random(trials) * cumulative[-1], side="right")
        candidates = np.minimum(picks, n - 1)
        to_candidates = squared_distances(x, x[candidates], norms).T
        lowered = np.minimum(closest[None, :], to_candidates)
        best = int(np.argmin(lowered.sum(1, dtype=np.float64)))
        chosen.append(int(candidates[best]))
        closest = lowered[best]
    return np.array(chosen, np.int64)


def kmeans(x: np.ndarray, k: int, config: HierarchyConfig, seed: int) -> np.ndarray:
    """Centroids (k, d) of ``x`` (all of it: sample before): k-means++ seeds, then Lloyd
    iterations (faiss, on GPUs where it sees them); of ``nredo`` starts the one of lowest
    objective. k is capped at len(x)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = min(k, n)
    rng = np.random.default_rng(seed)
    best, best_objective = None, math.inf
    for _ in range(config.nredo):
        init_rows = sample_rows(n, n if config.init_points_per_centroid is None
                                else k * config.init_points_per_centroid,
                                int(rng.integers(2**31)))  # fmt: skip
        seeds = x[init_rows[kmeans_plus_plus(x[init_rows], k, rng)]]
        km = faiss.Kmeans(d, k, niter=config.niter, seed=int(rng.integers(2**31)),
                          max_points_per_centroid=math.ceil(n / k), min_points_per_centroid=1,
                          gpu=gpu_count(config.use_gpu) > 0, verbose=False)  # fmt: skip
        km.train(x, init_centroids=np.ascontiguousarray(seeds))
        objective = km.obj[-1] if len(km.obj) else 0.0
        if objective < best_objective:
            best, best_objective = km.centroids.copy(), objective
    return best


def assign_l2(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid, squared L2 distance to it) of each row of ``x``."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    distance, nearest = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return nearest[:, 0].astype(np.int64), distance[:, 0]


def closest_per_cluster(
    cluster: np.ndarray, ids: np.ndarray, distance: np.ndarray, r: int
) -> np.ndarray:
    """Positions of the ``r`` entries closest to their centroid in each cluster (ties by
    id), in (cluster, distance, id) order. The r closest of a union of shards are the r
    closest of each shard's r closest, so shards select first and merge after."""
    order = np.lexsort((ids, distance, cluster))
    return order[ranks(cluster[order]) < r]


def fit_level(x: np.ndarray, level: LevelConfig, config: HierarchyConfig, position: int) -> Level:
    """One level over the rows of ``x``, in memory: k-means on a sample, then
    ``resampling_steps`` rounds of refitting on the ``r`` closest points of each cluster."""
    ids = np.arange(len(x))
    centroids = refit(ids, lambda rows: x[rows], level.k, config, position, 0)
    for step in range(1, level.resampling_steps + 1):
        cluster, distance = assign_l2(x, centroids)
        subset = np.sort(ids[closest_per_cluster(cluster, ids, distance, level.resample_size)])
        centroids = refit(subset, lambda rows: x[rows], level.k, config, position, step)
    cluster, distance = assign_l2(x, centroids)
    return Level(centroids, cluster, distance)


def refit(
    subset: np.ndarray, gather: Callable[[np.ndarray], np.ndarray], k: int,
    config: HierarchyConfig, position: int, step: int,
) -> np.ndarray:  # fmt: skip
    """Step ``step``'s k-means of a level over the rows ``subset`` (sorted ids, sampled
    down to the fit size), whose vectors ``gather`` reads: the first fit (step 0, every
    row) or a resampling step's (each cluster's closest rows)."""
    seed = config.step_seed(position, step)
    rows = subset[sample_rows(len(subset), config.fit_size(k, len(subset)), seed)]
    return kmeans(gather(rows), k, config, seed)


def upper_levels(first: Level, levels: list[LevelConfig], config: HierarchyConfig) -> Hierarchy:
    """The hierarchy whose level 1 is ``first``: each level above fitted on the centroids
    of the one below."""
    built = [first]
    for position, level in enumerate(levels[1:], 2):
        built.append(fit_level(built[-1].centroids, level, config, position))
    return Hierarchy(built)


def hierarchical_kmeans(x: np.ndarray, config: HierarchyConfig) -> Hierarchy:
    """Every level of ``x``'s hierarchy, in one process."""
    config.validate()
    levels = config.sized(len(x))
    return upper_levels(fit_level(np.asarray(x, np.float32), levels[0], config, 1), levels,
                        config)  # fmt: skip
