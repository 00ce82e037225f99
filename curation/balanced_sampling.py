"""Balanced sampling from a cluster hierarchy (Vo et al. 2024): a target size is split
top-down, each cluster's share over its children by water-filling, so that small
branches give everything they have and large ones the same amount each; inside a leaf
the images are drawn at random (default) or closest to its centroid first."""

from __future__ import annotations

import numpy as np

from curation.hierarchical_kmeans import Hierarchy

STRATEGIES = ("random", "closest")


def water_fill(capacity: np.ndarray, quota: int, rng: np.random.Generator) -> np.ndarray:
    """``quota`` split over children holding ``capacity`` each: the largest level t with
    sum(min(t, capacity)) <= quota gives each child min(t, capacity); what is left goes one
    each to random children holding more than t. All of it when quota covers it."""
    capacity = np.asarray(capacity, np.int64)
    if quota >= capacity.sum():
        return capacity.copy()
    low, high = 0, int(capacity.max())  # sum(min(low, c)) <= quota < sum(min(high, c))
    while high - low > 1:
        mid = (low + high) // 2
        if np.minimum(mid, capacity).sum() <= quota:
            low = mid
        else:
            high = mid
    share = np.minimum(low, capacity)
    left = quota - int(share.sum())
    share[rng.choice(np.flatnonzero(capacity > low), left, replace=False)] += 1
    return share


def members(assignment: np.ndarray, k: int) -> list[np.ndarray]:
    """Positions of each cluster's members, in position order."""
    order = np.argsort(assignment, kind="stable")
    return np.split(order, np.cumsum(np.bincount(assignment, minlength=k))[:-1])


def balanced_sample(
    hierarchy: Hierarchy, size: int, rng: np.random.Generator, strategy: str = "random",
    multiplier: int = 1,
) -> np.ndarray:  # fmt: skip
    """How many times each pool vector is drawn (0 for most): ``size`` in all, or every
    vector ``multiplier`` times where the pool is smaller. ``strategy``: how a leaf's
    share is drawn, at random or closest to its centroid first."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} not in {STRATEGIES}")
    levels = hierarchy.levels
    sizes = hierarchy.counts()
    m = multiplier
    quota = water_fill(sizes[-1] * m, size, rng)  # the top level's clusters
    for position in range(len(levels) - 1, 0, -1):  # level -> the level below it
        children = members(levels[position].assignment, levels[position].k)
        below = np.zeros(levels[position - 1].k, np.int64)
        for cluster in np.flatnonzero(quota):
            kids = children[cluster]
            below[kids] = water_fill(sizes[position - 1][kids] * m, int(quota[cluster]), rng)
        quota = below
    return _draw_leaves(quota, levels[0].assignment, levels[0].distance, strategy, rng)


def _draw_leaves(
    quota: np.ndarray, assignment: np.ndarray, distance: np.ndarray, strategy: str,
    rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """Each leaf's quota over its images: every image ``quota // size`` times, and
    ``quota % size`` of them once more (random, or the closest to the centroid)."""
    drawn = np.zeros(len(assignment), np.int64)
    leaves = members(assignment, len(quota))
    for leaf in np.flatnonzero(quota):
        rows = leaves[leaf]
        whole, extra = divmod(int(quota[leaf]), len(rows))
        drawn[rows] += whole
        if strategy == "closest":
            picked = rows[np.lexsort((rows, distance[rows]))[:extra]]
        else:
            picked = rng.choice(rows, extra, replace=False)
        drawn[picked] += 1
    return drawn


def balance_profile(hierarchy: Hierarchy, drawn: np.ndarray, points: int = 200) -> list[dict]:
    """Per level, the cluster sizes of the pool and of the drawn set, each sorted from the
    largest (at most ``points`` ranks, evenly spaced): what the report plots."""
    profile = []
    for pool, curated in zip(hierarchy.counts(), hierarchy.counts(drawn), strict=True):
        ranks = np.unique(np.linspace(0, len(pool) - 1, min(points, len(pool))).astype(int))
        profile.append({"k": len(pool), "ranks": ranks.tolist(),
                        "pool": np.sort(pool)[::-1][ranks].tolist(),
                        "curated": np.sort(curated)[::-1][ranks].tolist()})  # fmt: skip
    return profile
