"""Hierarchical k-means of a pool as shard tasks (:mod:`curation.hierarchical_kmeans` is
the algorithm; this runs its first level where no process holds the pool's vectors):

1. fit (one task): level 1's k-means on a sample of the pool, ``centroids-000.npy``.
2. per resampling step s: each pool shard's ``r`` closest vectors to each centroid (one
   task per shard, ``closest-SSS/NNNNN.parquet``), then one task merges them into each
   cluster's ``r`` closest of the whole pool, reruns k-means on those vectors and commits
   ``centroids-SSS.npy``.
3. assign (one task per shard): each vector's cluster and squared distance to it,
   ``assignment/NNNNN.parquet`` (schema ``neighbours/1``: query the pool id, base the
   cluster, similarity the negated squared distance).

The levels above are k-means of level 1's centroids, in memory. Every file is committed
atomically and a rerun does what is missing, in a directory named by the settings, so a
killed clustering resumes and one with other settings starts afresh.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.hierarchical_kmeans import (
    Hierarchy,
    HierarchyConfig,
    Level,
    LevelConfig,
    assign_l2,
    closest_per_cluster,
    refit,
    upper_levels,
)
from curation.tasks import ItemCounter, ShardRunner, ShardTasks
from curation.vector_shards import VectorShards
from manifests.atomic import atomic_path
from manifests.job import claim_directory, job_directory
from manifests.parquet_io import ShardedParquet
from manifests.schemas import NEIGHBOURS


def _centroids_path(out: str | Path, step: int) -> Path:
    return Path(out) / f"centroids-{step:03d}.npy"


def _closest(out: str | Path, step: int) -> ShardedParquet:
    return ShardedParquet(Path(out) / f"closest-{step:03d}", NEIGHBOURS)


def _save(path: Path, centroids: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, centroids)


def cluster_hierarchy(
    pool: VectorShards, config: HierarchyConfig, out: str | Path, runner: ShardRunner,
    progress: bool = True,
) -> Hierarchy:  # fmt: skip
    """The pool's hierarchy, its first level as shard tasks in ``out/hierarchy-<settings>``
    (see the module docstring); equal to :func:`hierarchical_kmeans` of the pool's vectors."""
    config.validate()
    levels = config.sized(len(pool))
    first = levels[0]
    job = {"pool": [pool.root, len(pool)], "hierarchy": asdict(config) | {"use_gpu": None}}
    out = job_directory(out, "hierarchy", job)
    claim_directory(out, "hierarchy.json", job, _centroids_path(out, 0).exists())
    gpus = 1.0 if config.use_gpu else 0.0
    if not _centroids_path(out, 0).exists():
        runner(ShardTasks(fit_first_level, [(pool, first, config, str(out))],
                          "hierarchy: fit level 1", gpus=gpus), progress)  # fmt: skip
    for step in range(1, first.resampling_steps + 1):
        if _centroids_path(out, step).exists():
            continue
        done = set(_closest(out, step).complete())
        tasks = [(q, pool, first.resample_size, step, str(out))
                 for q in range(len(pool.shards)) if q not in done]  # fmt: skip
        desc = f"hierarchy: resampling {step}/{first.resampling_steps}"
        runner(ShardTasks(select_closest, tasks, f"{desc}: closest", len(pool), "vector",
                          processes=0), progress)  # fmt: skip
        runner(ShardTasks(refit_first_level, [(pool, first, config, step, str(out))],
                          f"{desc}: refit", gpus=gpus), progress)  # fmt: skip
        shutil.rmtree(_closest(out, step).root, ignore_errors=True)
    final = first.resampling_steps
    assignments = ShardedParquet(out / "assignment", NEIGHBOURS)
    done = set(assignments.complete())
    tasks = [(q, pool, final, str(out)) for q in range(len(pool.shards)) if q not in done]
    runner(ShardTasks(assign_shard, tasks, "hierarchy: assign", len(pool), "vector",
                      processes=0), progress)  # fmt: skip
    table = assignments.read(["query", "base", "similarity"]).sort_by("query")
    level = Level(np.load(_centroids_path(out, final)), table.column("base").to_numpy(),
                  -table.column("similarity").to_numpy())  # fmt: skip
    return upper_levels(level, levels, config)


def fit_first_level(
    pool: VectorShards, level: LevelConfig, config: HierarchyConfig, out: str,
    on_items: ItemCounter | None = None,
) -> None:  # fmt: skip
    """Level 1's first k-means, on a sample of the pool."""
    centroids = refit(np.arange(len(pool)), pool.gather, level.k, config, 1, 0)
    _save(_centroids_path(out, 0), centroids)


def select_closest(
    position: int, pool: VectorShards, r: int, step: int, out: str,
    on_items: ItemCounter | None = None,
) -> None:  # fmt: skip
    """Commit the ``r`` vectors of one pool shard closest to each centroid of step
    ``step - 1``."""
    vectors = pool.read(position)
    ids = pool.ids(position)
    cluster, distance = assign_l2(vectors, np.load(_centroids_path(out, step - 1)))
    kept = closest_per_cluster(cluster, ids, distance, r)
    _closest(out, step).write(position, pa.table({
        "query": ids[kept], "base": cluster[kept], "similarity": -distance[kept],
        "rank": np.zeros(len(kept), np.int32),
    }))  # fmt: skip
    if on_items is not None:
        on_items(len(vectors), len(vectors))


def refit_first_level(
    pool: VectorShards, level: LevelConfig, config: HierarchyConfig, step: int, out: str,
    on_items: ItemCounter | None = None,
) -> None:  # fmt: skip
    """Merge the shards' closest vectors into each cluster's ``r`` closest of the pool and
    commit step ``step``'s centroids, k-means of those vectors."""
    table = _closest(out, step).read(["query", "base", "similarity"])
    ids = table.column("query").to_numpy()
    distance = -table.column("similarity").to_numpy()
    kept = closest_per_cluster(table.column("base").to_numpy(), ids, distance, level.resample_size)
    centroids = refit(np.sort(ids[kept]), pool.gather, level.k, config, 1, step)
    _save(_centroids_path(out, step), centroids)


def assign_shard(
    position: int, pool: VectorShards, step: int, out: str, on_items: ItemCounter | None = None
) -> None:
    """Commit each vector of one pool shard's cluster and squared distance to it."""
    vectors = pool.read(position)
    cluster, distance = assign_l2(vectors, np.load(_centroids_path(out, step)))
    ShardedParquet(Path(out) / "assignment", NEIGHBOURS).write(position, pa.table({
        "query": pool.ids(position), "base": cluster, "similarity": -distance,
        "rank": np.zeros(len(cluster), np.int32),
    }))  # fmt: skip
    if on_items is not None:
        on_items(len(vectors), len(vectors))
