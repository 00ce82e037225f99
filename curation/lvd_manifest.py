"""The retrieval stage: kept pool images + seed sets -> the LVD manifest (schema ``lvd/1``)
that ``python -m training.train --manifest`` reads, and a per-seed-set table like the
paper's Table 15."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.balanced_sampling import balance_profile, balanced_sample
from curation.hierarchical_kmeans import Hierarchy, HierarchyConfig
from curation.index import KMeansConfig, SearchConfig
from curation.local_runner import run_locally
from curation.retrieval import (
    Candidates,
    PoolClusters,
    SeedSetPlan,
    cluster_pool,
    merge_provenance,
    sample_clusters,
    sample_nearest,
)
from curation.sharded_hierarchy import cluster_hierarchy
from curation.tasks import ShardRunner
from curation.vector_shards import VectorShards
from manifests.atomic import write_bytes_atomic
from manifests.config import ConfigError
from manifests.embeddings import EmbeddingStore, require_same_model
from manifests.errors import ManifestError
from manifests.image_rows import read_image_rows, row_location
from manifests.parquet_io import ShardedParquet, portable_location, read_manifest
from manifests.schemas import DEDUP, LVD

log = logging.getLogger(__name__)


@dataclass
class PoolInputs:
    manifest: list[str] = field(default_factory=list)  # the crawl's pool manifest
    embeddings: str = ""  # pipelines.embed output for the pool
    dedup: str | None = None  # pipelines.dedup output: only kept images are candidates


@dataclass
class RetrievalConfig:
    pool: PoolInputs = field(default_factory=PoolInputs)
    seed_sets: list[SeedSetPlan] = field(default_factory=list)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)  # balanced method
    rows_per_shard: int = 100_000
    seed: int = 0  # random choices of the cluster and balanced methods

    def validate(self) -> None:
        if not self.pool.embeddings or not self.pool.manifest:
            raise ConfigError("pool.manifest and pool.embeddings are required")
        if not self.seed_sets:
            raise ConfigError("seed_sets: at least one seed set is required")
        for plan in self.seed_sets:
            plan.validate_method()
            if plan.method == "as_is" and not plan.manifest:
                raise ConfigError(f"seed set {plan.name}: as_is needs its manifest")
        self.hierarchy.validate()


def _candidate_pool(pool: PoolInputs) -> tuple[VectorShards, list[str], dict[str, Any]]:
    """(vectors, ids) of the pool images that were embedded and kept (the descriptors
    stay in their shards), and the image rows of the pool by id."""
    rows = {r["id"]: r for r in read_image_rows(pool.manifest)}
    kept: set[str] | None = None
    if pool.dedup is not None:
        dedup = read_manifest([Path(pool.dedup) / "dedup"], DEDUP, ["id", "keep"])
        kept = set(dedup.filter(pc.field("keep")).column("id").to_pylist())

    def take(ids: list[str]) -> np.ndarray:
        return np.array([i in rows and (kept is None or i in kept) for i in ids], dtype=bool)

    vectors, ids = VectorShards.select(pool.embeddings, take)
    log.info("retrieval candidates: %d embedded and kept pool images", len(ids))
    return vectors, ids, rows


def _as_is_rows(plan: SeedSetPlan) -> list[dict[str, Any]]:
    rows = read_image_rows(plan.manifest)
    if not rows:
        raise ManifestError(f"seed set {plan.name}: {plan.manifest} lists no images")
    return [{"id": r["id"], **row_location(r), "seed_sets": [plan.name], "methods": ["as_is"],
             "seed_ids": [r["id"]], "best_similarity": None, "cluster": None, "copies": 1}
            for r in rows]  # fmt: skip


def write_lvd_manifest(
    config: RetrievalConfig,
    out: str | Path,
    root: str | Path | None = None,
    runner: ShardRunner = run_locally,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out/lvd/NNNNN.parquet`` and ``out/retrieval_stats.json``; returns the stats.
    Images under ``root`` (the build directory) are located relative to the manifest. The
    searches and the clustering run as shard tasks on ``runner`` (work in ``out/search``,
    resumable), so no process holds the pool's descriptors."""
    config.validate()
    pool, pool_ids, image_rows = _candidate_pool(config.pool)
    if not len(pool):
        raise ManifestError(f"{config.pool.embeddings}: no embedded pool image is kept")
    pool_store = EmbeddingStore(config.pool.embeddings)
    work = Path(out) / "search"
    rng = np.random.default_rng(config.seed)
    clusters: PoolClusters | None = None
    hierarchy: Hierarchy | None = None
    balance: dict[str, list[dict[str, Any]]] = {}
    retrieved: list[tuple[str, str, Candidates]] = []  # (seed set, method, what it found)
    as_is: list[dict[str, Any]] = []
    table15 = []
    for plan in config.seed_sets:
        entry = {"seed_set": plan.name, "method": plan.method}
        if plan.method == "as_is":
            rows = _as_is_rows(plan)
            as_is += rows
            entry |= {"seed_images": len(rows), "retrieved": len(rows), "after_cap": len(rows)}
            table15.append(entry)
            continue
        if plan.method == "balanced":
            hierarchy = hierarchy or cluster_hierarchy(pool, config.hierarchy, work, runner,
                                                       progress)  # fmt: skip
            drawn = balanced_sample(hierarchy, plan.size, rng, plan.strategy, plan.multiplier)
            found = _drawn(drawn)
            retrieved.append((plan.name, plan.method, found))
            balance[plan.name] = balance_profile(hierarchy, drawn)
            entry |= {"seed_images": 0, "retrieved": int(drawn.sum()),
                      "after_cap": len(found.pool_rows)}  # fmt: skip
            table15.append(entry)
            continue
        store = EmbeddingStore(plan.embeddings)
        require_same_model(pool_store, [store])
        if plan.method == "sample":
            seeds, seed_ids = VectorShards.select(plan.embeddings)
            found = sample_nearest(pool, seeds, seed_ids, plan.neighbours, config.search,
                                   work / f"sample-{plan.name}", runner, progress)  # fmt: skip
            before_cap = len(np.unique(found.pool_rows))
        else:
            seed_ids, seeds = store.read()
            clusters = clusters or cluster_pool(pool, _sized(config.kmeans, len(pool)), work,
                                                runner, progress)  # fmt: skip
            found, before_cap, most = sample_clusters(clusters, seeds, plan, rng)
            if not before_cap:
                entry["note"] = (
                    f"no cluster holds more than min_seeds={plan.min_seeds} of its "
                    f"{len(seed_ids)} seed images (at most {most} in one of "
                    f"{len(clusters.centroids)} clusters): lower min_seeds or kmeans.k"
                )
                log.warning("seed set %s (cluster): nothing retrieved; %s", plan.name,
                            entry["note"])  # fmt: skip
        retrieved.append((plan.name, plan.method, found))
        entry |= {"seed_images": len(seed_ids), "retrieved": before_cap,
                  "after_cap": len(np.unique(found.pool_rows))}  # fmt: skip
        table15.append(entry)
    if not any(entry["after_cap"] for entry in table15):
        raise ManifestError(f"retrieve: no image retrieved for any seed set of {len(pool)} "
                            f"candidates ({'; '.join(_explain(e) for e in table15)})")  # fmt: skip

    merged = merge_provenance(retrieved).to_pylist()
    rows = [{"id": pool_ids[m["pool_row"]], **row_location(image_rows[pool_ids[m["pool_row"]]]),
             **{k: v for k, v in m.items() if k != "pool_row"}} for m in merged]  # fmt: skip
    lvd = ShardedParquet(Path(out) / "lvd", LVD)
    rows = [portable_location(r, lvd.root, root) for r in _merge_by_id(rows + as_is)]
    table = pa.Table.from_pylist(rows, schema=LVD.arrow)
    lvd.write_table(table, config.rows_per_shard)
    stats = {"images": table.num_rows, "candidates": len(pool), "seed_sets": table15,
             "kmeans": {"k": config.kmeans.k, "clusters": len(clusters.centroids)}
             if clusters is not None else None,
             "hierarchy": [level.k for level in hierarchy.levels] if hierarchy else None,
             "balance": balance}  # fmt: skip
    write_bytes_atomic(Path(out) / "retrieval_stats.json", json.dumps(stats, indent=1).encode())
    return stats


def _drawn(drawn: np.ndarray) -> Candidates:
    """A balanced draw as candidates: the pool rows drawn and their copies (``cluster`` is
    the cluster method's k-means; the hierarchy's clusters are in its own files)."""
    rows = np.flatnonzero(drawn)
    return Candidates(rows, [None] * len(rows), np.full(len(rows), np.nan),
                      np.full(len(rows), -1), drawn[rows])  # fmt: skip


def _sized(config: KMeansConfig, n: int) -> KMeansConfig:
    """``config`` with k sized to a pool of ``n`` (said in a warning when it is cut)."""
    k = config.clusters_for(n)
    if k < config.k:
        log.warning("kmeans.k=%d: a pool of %d candidates fills %d clusters of "
                    "kmeans.min_cluster_size=%d at most; clustering into %d", config.k, n, k,
                    config.min_cluster_size, k)  # fmt: skip
    return replace(config, k=k)


def _explain(entry: dict[str, Any]) -> str:
    return f"{entry['seed_set']} ({entry['method']}): {entry.get('note', 'none retrieved')}"


def _merge_by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per id (a seed image taken as is may also be a retrieved pool image)."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen = by_id.get(row["id"])
        if seen is None:
            by_id[row["id"]] = row
            continue
        for key in ("seed_sets", "methods", "seed_ids"):
            seen[key] = sorted(set(seen[key] or []) | set(row[key] or []))
        sims = [s for s in (seen["best_similarity"], row["best_similarity"]) if s is not None]
        seen["best_similarity"] = max(sims) if sims else None
        seen["copies"] = max(seen["copies"], row["copies"])
    return list(by_id.values())
