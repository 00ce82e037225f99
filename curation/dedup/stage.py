"""The hash and dedup stages over a pool: exact -> hash -> copy -> relative dedup.

Groups are cumulative: an exact group lies inside one hash group, which lies inside one
copy component. Every group is labelled by the row (in manifest order) of its first
member, so labels are stable across reruns. One image per copy component is kept (policy
in :mod:`curation.dedup.policy`), unless the component touches an evaluation image.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from torch.utils.data import DataLoader

from curation.dedup.copy_graph import PAPER_COPY_SETTINGS, CopyGraphConfig
from curation.dedup.hashes import PCAHash, hamming_pairs, image_hashes, int64_codes
from curation.dedup.policy import reasons, representatives
from curation.dedup.union_find import UnionFind, components_of_equal_values
from curation.dedup.verify import GeometricVerifier, accept_candidates
from curation.descriptor_space import DescriptorSpace
from curation.local_runner import run_locally
from curation.sharded_search import SearchPlan, run_search
from curation.tasks import ItemCounter, ShardRunner, ShardTasks
from curation.vector_shards import VectorShards
from manifests.atomic import write_bytes_atomic
from manifests.config import bounded
from manifests.embeddings import EmbeddingStore, require_same_model
from manifests.errors import ManifestError
from manifests.image_rows import ImageBytesReader, ImageRow, read_image_rows, require_image_rows
from manifests.job import claim_directory, job_directory, relative_paths
from manifests.parquet_io import ShardedParquet, pending_shards
from manifests.schemas import DEDUP, HASHES

log = logging.getLogger(__name__)


@dataclass
class DedupConfig:
    rows_per_shard: int = bounded(10_000, at_least=1)
    num_workers: int = bounded(2, at_least=0)  # hashing processes
    # hash pairs within a radius (Hamming bits, inclusive) are candidates; those within the
    # safe radius are copies outright, the others only if the copy descriptor agrees
    phash_radius: int = bounded(8, at_least=0, at_most=64)
    phash_safe_radius: int = bounded(2, at_least=0, at_most=64)
    pca_bits: int = bounded(64, at_least=1)
    pca_radius: int = bounded(4, at_least=0)
    pca_safe_radius: int = bounded(1, at_least=0)
    pca_sample: int = 100_000  # thumbnails the PCA is fitted on
    keep: str = "largest"  # curation.dedup.policy.KEEP_POLICIES
    copy: CopyGraphConfig = field(default_factory=CopyGraphConfig)


class _HashInputs:
    """Rows -> hash dicts (or an error), decoded in DataLoader worker processes."""

    def __init__(self, rows: list[ImageRow]) -> None:
        self.rows = rows
        self.images = ImageBytesReader()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        try:
            return {"ok": True, "error": None, **image_hashes(self.images.read(row))}
        except Exception as exc:  # noqa: BLE001 - one bad image is a row, never fatal
            return self._failed(row, f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _failed(row: dict[str, Any], error: str) -> dict[str, Any]:
        log.warning("cannot hash %s (%s): %s", row["id"], row["source"], error)
        return {"ok": False, "error": error}


def hash_pool(
    manifests: list[str | Path],
    out: str | Path,
    config: DedupConfig,
    progress: bool = True,
    runner: ShardRunner = run_locally,
) -> ShardedParquet:
    """Write ``out/hashes/NNNNN.parquet`` (schema ``hashes/1``); complete shards are kept.
    Each pending shard is one task of :func:`hash_shard`."""
    rows = require_image_rows(manifests)
    store = ShardedParquet(Path(out) / "hashes", HASHES)
    job = {"manifests": relative_paths(manifests, store.root), "rows": len(rows),
           "rows_per_shard": config.rows_per_shard}  # fmt: skip
    claim_directory(store.root, "hash.json", job, bool(store.complete()))
    store.remove_partial()
    todo = pending_shards(rows, config.rows_per_shard, store.complete())
    tasks = [(i, chunk, str(store.root), config) for i, chunk in todo]
    runner(ShardTasks(hash_shard, tasks, "hash", sum(len(c) for _, c in todo), "img"), progress)
    return store


def hash_shard(
    index: int,
    rows: list[dict[str, Any]],
    root: str | Path,
    config: DedupConfig,
    on_items: ItemCounter | None = None,
) -> None:
    """Hash the images of ``rows`` (as ``read_image_rows`` gives them) and commit shard
    ``index`` of ``root``; ``on_items(done, ok)`` is called as batches finish."""
    loader = DataLoader(_HashInputs(rows), batch_size=64, collate_fn=list,
                        num_workers=config.num_workers)  # fmt: skip
    hashed: list[dict[str, Any]] = []
    for batch in loader:
        hashed += batch
        if on_items is not None:
            on_items(len(batch), sum(h["ok"] for h in batch))
    table = pa.Table.from_pylist(hashed, schema=HASHES.arrow.remove(0))
    table = table.add_column(0, "id", pa.array([r["id"] for r in rows]))
    ShardedParquet(root, HASHES).write(index, table)


def copy_settings(
    config: CopyGraphConfig, pool: EmbeddingStore, evaluation: list[EmbeddingStore]
) -> CopyGraphConfig:
    """The copy-graph settings for this embedding model; evaluation sets must share it."""
    require_same_model(pool, evaluation)
    return config.resolved((pool.meta() or {}).get("copy_detection"))


def image_reader(manifests: list[str | Path], ids: list[str]) -> Callable[[int], bytes]:
    """``read(row) -> bytes`` of the image of ``ids[row]``, from the manifests listing them."""
    by_id = {r["id"]: r for r in read_image_rows(manifests)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ManifestError(f"{[str(m) for m in manifests]}: no image rows for {len(missing)} "
                            f"hashed ids, e.g. {missing[:3]}")  # fmt: skip
    rows, images = [by_id[i] for i in ids], ImageBytesReader()
    return lambda row: images.read(rows[row])


def hash_pairs(
    hashes: pa.Table, rows: np.ndarray, config: DedupConfig, stats: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pHash and PCA-hash pairs (a, b) of ``rows`` within their radii, and whether each is
    within a safe radius: near-exact copies that need no second look."""
    if len(rows) < 2:
        none = np.zeros(0, np.int64)
        return none, none, np.zeros(0, bool)
    phash = int64_codes(hashes.column("phash").take(rows).to_numpy())
    i, j, bits = hamming_pairs(phash, config.phash_radius)
    found = [(i, j, bits <= config.phash_safe_radius)]
    stats["edges"]["phash"] = len(i)
    if len(rows) < 2 * config.pca_bits:
        log.warning("PCA hash skipped: %d images, fewer than 2 x %d bits", len(rows),
                    config.pca_bits)  # fmt: skip
    else:
        thumbs = hashes.column("thumb").take(rows).to_pylist()
        pca = PCAHash(config.pca_bits).fit(thumbs, config.pca_sample)
        i, j, bits = hamming_pairs(pca.codes(thumbs), config.pca_radius)
        found.append((i, j, bits <= config.pca_safe_radius))
        stats["edges"]["pca_hash"] = len(i)
    a, b, safe = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return rows[a], rows[b], safe


class CopyJudge:
    """Which candidate pairs of pool rows are copies, by the descriptors of the pool's
    unique images (one per exact group; global ids of ``vectors``, pool rows
    ``vector_rows``): cosine above the threshold, or, with geometric verification, what
    :func:`accept_candidates` decides."""

    def __init__(self, copy: CopyGraphConfig, vectors: VectorShards, vector_rows: np.ndarray,
                 space: DescriptorSpace, n: int,
                 read_image: Callable[[int], bytes] | None) -> None:  # fmt: skip
        self.copy, self.vectors, self.rows, self.space = copy, vectors, vector_rows, space
        self.position = np.full(n, -1, np.int64)
        self.position[vector_rows] = np.arange(len(vector_rows))
        self.verifier = _verifier(copy, read_image, vector_rows)
        self.outcomes: dict[str, int] = {}

    @property
    def candidate_threshold(self) -> float:
        return self.copy.verify_from if self.verifier else self.copy.threshold

    def knn_plan(self) -> SearchPlan:
        """Each unique image's k nearest others above the candidate threshold."""
        c = self.copy
        return SearchPlan(self.vectors, self.vectors, c.k + 1, c.index, self.candidate_threshold,
                          exclude_self=True, space=self.space)  # fmt: skip

    def knn_candidates(
        self, neighbours: ShardedParquet
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Shards of (vector id, vector id, cosine) of the kNN graph; with verification,
        only each image's ``verify_top`` nearest candidates below ``verify_until``."""
        for _, table in neighbours.iter_shards():
            a, b = table.column("query").to_numpy(), table.column("base").to_numpy()
            cosine = table.column("similarity").to_numpy()
            if self.verifier is not None:
                rank = table.column("rank").to_numpy()
                keep = (cosine >= self.copy.verify_until) | (rank < self.copy.verify_top)
                a, b, cosine = a[keep], b[keep], cosine[keep]
            yield a, b, cosine

    def pair_candidates(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
        """Pool-row pairs -> (vector id, vector id, cosine), those with descriptors both."""
        va, vb = self.position[a], self.position[b]
        both = (va >= 0) & (vb >= 0)
        va, vb = va[both], vb[both]
        x = self.space.apply(self.vectors.gather(np.concatenate([va, vb])))
        return va, vb, np.einsum("ij,ij->i", x[: len(va)], x[len(va) :])

    def copies(self, a: np.ndarray, b: np.ndarray, cosine: np.ndarray) -> tuple[np.ndarray, ...]:
        """The pool rows (a, b) of the candidate vector-id pairs that are copies."""
        keep = cosine > self.candidate_threshold
        a, b, cosine = a[keep], b[keep], cosine[keep]
        if self.verifier is not None:
            c = self.copy
            keep, outcome = accept_candidates(a, b, cosine, self.verifier, c.threshold,
                                              c.verify_until, c.criteria)  # fmt: skip
            a, b = a[keep], b[keep]
            for key, count in outcome.items():
                self.outcomes[key] = self.outcomes.get(key, 0) + count
        return self.rows[a], self.rows[b]


@dataclass(frozen=True)
class SearchRun:
    """Where the dedup's sharded searches write (``workdir/knn-*``, ``workdir/relativeI-*``,
    one directory per search's settings) and the runner of their tasks."""

    workdir: Path
    runner: ShardRunner = run_locally
    progress: bool = True

    def __call__(self, plan: SearchPlan, name: str) -> ShardedParquet:
        out = job_directory(self.workdir, name, plan.describe())
        return run_search(plan, out, self.runner, self.progress, f"dedup {name}")


def unique_vectors(
    embeddings: EmbeddingStore, ids: list[str], unique: np.ndarray
) -> tuple[VectorShards, np.ndarray]:
    """The descriptors of the pool rows ``unique`` (as shards) and the pool row of each."""
    row_of = {id_: row for row, id_ in enumerate(ids)}
    is_unique = np.zeros(len(ids), bool)
    is_unique[unique] = True
    unknown = []

    def take(shard_ids: list[str]) -> np.ndarray:
        rows = np.array([row_of.get(i, -1) for i in shard_ids], dtype=np.int64)
        unknown.append(int((rows < 0).sum()))
        return (rows >= 0) & is_unique[rows]

    vectors, vector_ids = VectorShards.select(str(embeddings.root), take)
    if sum(unknown):
        log.warning("%s: %d embedded ids are not in the pool; ignored", embeddings.root,
                    sum(unknown))  # fmt: skip
    missing = len(unique) - len(vector_ids)
    if missing:  # build_lvd embeds one image per exact group
        log.info("%d unique pool images have no embedding: no copy edges of their own", missing)
    return vectors, np.array([row_of[i] for i in vector_ids], dtype=np.int64)


def deduplicate(
    hashes: pa.Table,
    embeddings: EmbeddingStore | None,
    evaluation: list[EmbeddingStore],
    config: DedupConfig,
    searches: SearchRun,
    read_image: Callable[[int], bytes] | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """The dedup manifest (schema ``dedup/1``) for the rows of ``hashes``, and its stats.
    ``read_image(row)`` gives a row's image bytes, for geometric verification; the kNN
    searches run as shard tasks (:mod:`curation.sharded_search`), so no process holds the
    pool's descriptors.

    Only one image per exact group takes part beyond the exact level (its descriptor is
    the group's; copies of its bytes add nothing), so a pool embedded in full and one whose
    exact duplicates were never embedded give the same result."""
    ids = hashes.column("id").to_pylist()
    n = len(ids)
    ok = hashes.column("ok").to_numpy(zero_copy_only=False)
    pixels = hashes.column("pixels").fill_null(0).to_numpy()
    stats: dict[str, Any] = {"images": n, "undecodable": int((~ok).sum()), "edges": {}}
    timings: dict[str, float] = {}

    started = time.perf_counter()
    sha = np.asarray(hashes.column("sha256").fill_null("").to_pylist(), dtype=object)
    has_sha = sha != ""
    exact = components_of_equal_values(sha.astype(str), has_sha)
    uf = UnionFind(n)
    uf.union(np.arange(n), exact)
    exact_rep = representatives(exact, pixels, ids, config.keep)
    unique = np.flatnonzero(ok & (exact_rep == np.arange(n)))
    timings["exact_s"] = time.perf_counter() - started

    started = time.perf_counter()
    a, b, safe = hash_pairs(hashes, unique, config, stats)
    uf.union(a[safe], b[safe])
    stats["edges"]["hash_safe"] = int(safe.sum())
    unsure = a[~safe], b[~safe]
    timings["hash_s"] = time.perf_counter() - started

    tainted = np.zeros(n, bool)
    judge = None
    if embeddings is not None:
        started = time.perf_counter()
        copy = copy_settings(config.copy, embeddings, evaluation)
        stats["copy_settings"] = {k: getattr(copy, k) for k in PAPER_COPY_SETTINGS}
        vectors, vector_rows = unique_vectors(embeddings, ids, unique)
        space = DescriptorSpace(copy.normalize, copy.whiten_dim)
        space.fit(vectors.sample(copy.space_sample))
        judge = CopyJudge(copy, vectors, vector_rows, space, n, read_image)
        confirmed = judge.copies(*judge.pair_candidates(*unsure))
        uf.union(*confirmed)
        stats["edges"]["hash_confirmed"] = len(confirmed[0])
    stats["edges"]["hash_unconfirmed"] = len(unsure[0]) - stats["edges"].get("hash_confirmed", 0)
    hash_groups = uf.labels()

    if judge is not None:
        stats["edges"]["copy"] = 0
        for chunk in judge.knn_candidates(searches(judge.knn_plan(), "knn")):
            edges = judge.copies(*chunk)
            uf.union(*edges)
            stats["edges"]["copy"] += len(edges[0])
        stats["verification"] = judge.outcomes
        timings["copy_s"] = time.perf_counter() - started
        started = time.perf_counter()
        for i, store in enumerate(evaluation):
            near = SearchPlan(VectorShards.select(str(store.root))[0], vectors, 1,
                              copy.index, copy.relative_threshold, space=space)  # fmt: skip
            for _, table in searches(near, f"relative{i}").iter_shards(["query"]):
                tainted[vector_rows[table.column("query").to_numpy()]] = True
        timings["relative_s"] = time.perf_counter() - started
    elif len(unsure[0]):
        log.warning("%d hash pairs beyond the safe radius left unconfirmed: no descriptors "
                    "to check them with", len(unsure[0]))  # fmt: skip
    components = uf.labels()
    tainted = np.isin(components, components[tainted])

    hash_rep = representatives(hash_groups, pixels, ids, config.keep)
    copy_rep = representatives(components, pixels, ids, config.keep)
    keep = (copy_rep == np.arange(n)) & ~tainted
    table = pa.table({
        "id": ids, "exact_group": exact, "hash_group": hash_groups,
        "copy_component": components, "keep": keep,
        "reason": reasons(exact_rep, hash_rep, copy_rep, tainted),
        "representative": [ids[r] for r in copy_rep],
    })  # fmt: skip
    stats["funnel"] = {
        "raw": n,
        "after_exact": int((exact_rep == np.arange(n)).sum()),
        "after_hash": int((hash_rep == np.arange(n)).sum()),
        "after_copy": int((copy_rep == np.arange(n)).sum()),
        "after_relative": int(keep.sum()),
    }
    stats["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    return table, stats


def _verifier(
    copy: CopyGraphConfig, read_image: Callable[[int], bytes] | None, emb_rows: np.ndarray
) -> GeometricVerifier | None:
    """A verifier over descriptor rows (mapped to pool rows), when the settings ask for one."""
    if not copy.verify:
        return None
    if read_image is None:
        raise ValueError("copy.verify needs the pool's images (read_image); or set copy.verify")
    return GeometricVerifier(
        lambda row: read_image(int(emb_rows[row])), features=copy.verify_features
    )


def hash_and_dedup(
    manifests: list[str | Path],
    out: str | Path,
    embeddings: str | Path | None = None,
    evaluation: list[str | Path] = (),
    config: DedupConfig | None = None,
    progress: bool = True,
    runner: ShardRunner = run_locally,
) -> dict[str, Any]:
    """Hash the pool (resumable), then write ``out/dedup/NNNNN.parquet`` (one row per pool
    image, in manifest order, ``rows_per_shard`` per shard) and ``out/dedup_stats.json``."""
    config = config or DedupConfig()
    started = time.perf_counter()
    hashes = hash_pool(manifests, out, config, progress, runner).read()
    stats = write_dedup(hashes, manifests, out, embeddings, evaluation, config, progress, runner)
    stats["seconds"]["hash_stage_s"] = round(time.perf_counter() - started, 3)
    write_bytes_atomic(Path(out) / "dedup_stats.json", json.dumps(stats, indent=1).encode())
    return stats


def write_dedup(
    hashes: pa.Table,
    manifests: list[str | Path],
    out: str | Path,
    embeddings: str | Path | None = None,
    evaluation: list[str | Path] = (),
    config: DedupConfig | None = None,
    progress: bool = True,
    runner: ShardRunner = run_locally,
) -> dict[str, Any]:
    """:func:`deduplicate` the hashed pool (its images listed by ``manifests``) into
    ``out/dedup/NNNNN.parquet`` and ``out/dedup_stats.json``; returns the stats. The kNN
    searches' shards (resumable) go to ``out/copy_graph/``."""
    config = config or DedupConfig()
    pool_store = EmbeddingStore(embeddings) if embeddings is not None else None
    reader = image_reader(manifests, hashes.column("id").to_pylist())
    searches = SearchRun(Path(out) / "copy_graph", runner, progress)
    table, stats = deduplicate(hashes, pool_store, [EmbeddingStore(e) for e in evaluation],
                               config, searches, reader)  # fmt: skip
    stats["reasons"] = {
        str(k): v for k, v in Counter(table.column("reason").to_pylist()).items() if k is not None
    }
    ShardedParquet(Path(out) / "dedup", DEDUP).write_table(table, config.rows_per_shard,
                                                           asdict(config))  # fmt: skip
    write_bytes_atomic(Path(out) / "dedup_stats.json", json.dumps(stats, indent=1).encode())
    return stats
