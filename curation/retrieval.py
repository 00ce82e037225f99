"""Retrieval around seed sets (the paper's step 5): from the kept pool images and the seed
sets' embeddings to the LVD manifest.

Per seed set, one of:

- ``as_is``: the seed set's own images, whole.
- ``sample``: the k nearest kept pool images of each seed image (k = 4 in the paper for
  ImageNet-22k and GLDv2, 32 for ImageNet-1k).
- ``cluster``: the pool is clustered once (k-means, 100,000 clusters in the paper); every
  cluster holding more than ``min_seeds`` seed images contributes up to ``per_cluster``
  of its pool images (random), and the seed set at most ``cap`` (random).
- ``balanced``: no seed images; ``size`` pool images drawn evenly over a hierarchical
  k-means of the pool (Vo et al. 2024, DINOv3's LVD-1689M;
  :mod:`curation.balanced_sampling`).

A pool image retrieved by several seeds or seed sets is one row whose provenance lists
them all.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.balanced_sampling import STRATEGIES
from curation.index import (
    KMeansConfig,
    SearchConfig,
    assign,
    build_search_index,
    kmeans_centroids,
    search,
)
from curation.sharded_search import SearchPlan, run_search
from curation.tasks import ItemCounter, ShardRunner, ShardTasks
from curation.vector_shards import VectorShards
from manifests.atomic import atomic_path
from manifests.config import ConfigError, bounded
from manifests.job import claim_directory, job_directory
from manifests.parquet_io import ShardedParquet
from manifests.schemas import NEIGHBOURS

log = logging.getLogger(__name__)

METHODS = ("as_is", "sample", "cluster", "balanced")
CENTROIDS = "centroids.npy"


@dataclass
class SeedSetPlan:
    name: str
    embeddings: str = ""  # pipelines.embed output for the seed set (not used by as_is)
    method: str = "sample"  # as_is | sample | cluster | balanced
    manifest: list[str] = field(default_factory=list)  # as_is: where its images are
    k: int | None = None  # sample: neighbours per seed image; None: 32 for imagenet1k, else 4
    min_seeds: int = 3  # cluster: a cluster needs more seed images than this
    per_cluster: int = 10_000  # cluster: pool images taken from each chosen cluster
    cap: int = 1_000_000  # cluster: pool images per seed set at most
    size: int = bounded(1_000_000, at_least=1)  # balanced: images drawn
    strategy: str = "random"  # balanced: inside a leaf cluster, random | closest
    multiplier: int = bounded(1, at_least=1)  # balanced: times one image may be drawn

    @property
    def neighbours(self) -> int:
        """The paper's k: 4 for ImageNet-22k and GLDv2, 32 for ImageNet-1k."""
        if self.k is not None:
            return self.k
        return 32 if self.name == "imagenet1k" else 4

    @property
    def has_seeds(self) -> bool:
        """Whether the plan reads seed images (a balanced draw reads the pool only)."""
        return self.method != "balanced"

    @property
    def needs_embeddings(self) -> bool:
        """Whether the plan searches with its seed images' embeddings (sample, cluster)."""
        return self.method in ("sample", "cluster")

    def validate_method(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"seed set {self.name}: method {self.method!r} not in {METHODS}")
        if self.method == "balanced" and self.strategy not in STRATEGIES:
            raise ConfigError(f"seed set {self.name}: strategy {self.strategy!r} not in "
                              f"{STRATEGIES}")  # fmt: skip


@dataclass
class Candidates:
    """Pool images one seed set retrieved, one entry per (pool image, seed) pair."""

    pool_rows: np.ndarray
    seed_ids: list[str | None]
    similarity: np.ndarray  # NaN where none (balanced)
    cluster: np.ndarray  # -1 where not retrieved by clustering
    copies: np.ndarray | None = None  # times each is drawn (balanced); None: once each


def sample_nearest(
    pool: VectorShards, seeds: VectorShards, seed_ids: list[str], k: int,
    config: SearchConfig, out: Path, runner: ShardRunner, progress: bool = True,
) -> Candidates:  # fmt: skip
    """The k nearest pool vectors of every seed vector, by a sharded search into
    ``out-<settings>``."""
    plan = SearchPlan(pool, seeds, k, config.index(pool.dim))
    where = job_directory(out.parent, out.name, plan.describe())
    neighbours = run_search(plan, where, runner, progress, f"retrieve {out.name}")
    found = neighbours.read(["query", "base", "similarity"])
    seed_of = found.column("query").to_numpy()
    return Candidates(found.column("base").to_numpy(), [seed_ids[i] for i in seed_of],
                      found.column("similarity").to_numpy(),
                      np.full(found.num_rows, -1))  # fmt: skip


@dataclass
class PoolClusters:
    centroids: np.ndarray
    assignment: np.ndarray  # cluster of each pool vector
    similarity: np.ndarray  # inner product of each pool vector with its centroid

    def members(self) -> dict[int, np.ndarray]:
        order = np.argsort(self.assignment, kind="stable")
        ids, starts = np.unique(self.assignment[order], return_index=True)
        return dict(zip(ids.tolist(), np.split(order, starts[1:]), strict=True))


def cluster_pool(
    pool: VectorShards, config: KMeansConfig, out: str | Path, runner: ShardRunner,
    progress: bool = True,
) -> PoolClusters:  # fmt: skip
    """k-means of the pool as shard tasks, in ``out/kmeans-<settings>``: centroids trained
    on a sample (one task, ``centroids.npy``), then every pool shard assigned (one task
    each, ``assignment/NNNNN.parquet``); both resume."""
    job = {"pool": [pool.root, len(pool)], "kmeans": asdict(config) | {"use_gpu": None}}
    out = job_directory(out, "kmeans", job)
    assignments = ShardedParquet(out / "assignment", NEIGHBOURS)
    claim_directory(out, "kmeans.json", job, (out / CENTROIDS).exists())
    gpus = 1.0 if config.use_gpu else 0.0
    if not (out / CENTROIDS).exists():
        runner(ShardTasks(fit_centroids, [(pool, config, str(out))], "k-means: fit", gpus=gpus),
               progress)  # fmt: skip
    done = set(assignments.complete())
    tasks = [(q, pool, config.spherical, str(out)) for q in range(len(pool.shards))
             if q not in done]  # fmt: skip
    runner(ShardTasks(assign_shard, tasks, "k-means: assign", processes=0), progress)
    table = assignments.read(["base", "similarity"])
    return PoolClusters(np.load(out / CENTROIDS), table.column("base").to_numpy(),
                        table.column("similarity").to_numpy())  # fmt: skip


def fit_centroids(
    pool: VectorShards, config: KMeansConfig, out: str, on_items: ItemCounter | None = None
) -> None:
    """Train the centroids on a sample of the pool; commit ``centroids.npy``."""
    centroids = kmeans_centroids(pool.sample(config.sample_size(len(pool)), config.seed), config)
    with atomic_path(Path(out) / CENTROIDS) as tmp, open(tmp, "wb") as f:
        np.save(f, centroids)


def assign_shard(
    position: int, pool: VectorShards, spherical: bool, out: str,
    on_items: ItemCounter | None = None,
) -> None:  # fmt: skip
    """Commit the centroid of each vector of one pool shard (query: pool id, base:
    cluster, similarity: inner product with the centroid)."""
    vectors = pool.read(position)
    cluster, similarity = assign(vectors, np.load(Path(out) / CENTROIDS), spherical)
    ShardedParquet(Path(out) / "assignment", NEIGHBOURS).write(position, pa.table({
        "query": pool.ids(position), "base": cluster.astype(np.int64),
        "similarity": similarity.astype(np.float32), "rank": np.zeros(len(cluster), np.int32),
    }))  # fmt: skip
    if on_items is not None:
        on_items(len(vectors), len(vectors))


def sample_clusters(
    clusters: PoolClusters, seeds: np.ndarray, plan: SeedSetPlan, rng: np.random.Generator
) -> tuple[Candidates, int, int]:
    """Pool images of the clusters with more than ``min_seeds`` seeds, ``per_cluster`` each
    and ``cap`` in all; also returns the count before the cap and the most seeds any one
    cluster holds. Similarity: to the centroid."""
    centroid_index = build_search_index(clusters.centroids, SearchConfig(exact_max=2**62))
    _, nearest = search(centroid_index, seeds, 1)
    seeds_per_cluster = np.bincount(nearest[:, 0], minlength=len(clusters.centroids))
    chosen = np.flatnonzero(seeds_per_cluster > plan.min_seeds)
    members = clusters.members()
    picked = []
    for c in chosen:
        rows = members.get(int(c), np.zeros(0, np.int64))
        if len(rows) > plan.per_cluster:
            rows = np.sort(rng.choice(rows, size=plan.per_cluster, replace=False))
        picked.append(rows)
    rows = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    before_cap = len(rows)
    if len(rows) > plan.cap:
        rows = np.sort(rng.choice(rows, size=plan.cap, replace=False))
    found = Candidates(rows, [None] * len(rows), clusters.similarity[rows],
                       clusters.assignment[rows])  # fmt: skip
    return found, before_cap, int(seeds_per_cluster.max())


def merge_provenance(per_plan: list[tuple[str, str, Candidates]]) -> pa.Table:
    """One row per retrieved pool image of the plans' (seed set, method, candidates): its
    pool_row, seed_sets, methods, seed_ids, best_similarity, cluster (null unless
    clustered), copies (the most any draw asked). A seed set may have several plans."""
    parts = []
    for name, method, c in per_plan:
        copies = np.ones(len(c.pool_rows), np.int64) if c.copies is None else c.copies
        parts.append(pa.table({
            "pool_row": pa.array(c.pool_rows, pa.int64()),
            "seed_set": pa.array([name] * len(c.pool_rows), pa.string()),
            "method": pa.array([method] * len(c.pool_rows), pa.string()),
            "seed_id": pa.array(c.seed_ids, pa.string()),
            "similarity": pa.array(c.similarity, pa.float32(), from_pandas=True),  # NaN: null
            "cluster": pa.array(np.where(c.cluster >= 0, c.cluster, None), pa.int64()),
            "copies": pa.array(copies, pa.int32()),
        }))  # fmt: skip
    if not parts:
        return pa.table({"pool_row": pa.array([], pa.int64())})
    # one thread: "distinct" lists then keep the order of first appearance (seed sets in
    # the recipe's order); threads make it vary between runs of the same inputs
    grouped = pa.concat_tables(parts).group_by("pool_row", use_threads=False).aggregate([
        ("seed_set", "distinct"), ("method", "distinct"), ("seed_id", "distinct"),
        ("similarity", "max"), ("cluster", "max"), ("copies", "max"),
    ])  # fmt: skip
    grouped = grouped.sort_by("pool_row")
    names = {"seed_set_distinct": "seed_sets", "method_distinct": "methods",
             "seed_id_distinct": "seed_ids", "similarity_max": "best_similarity",
             "cluster_max": "cluster", "copies_max": "copies"}  # fmt: skip
    return grouped.rename_columns([names.get(n, n) for n in grouped.column_names])
