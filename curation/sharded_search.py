"""k nearest neighbours of sharded query vectors among sharded base vectors, as shard
tasks whose memory is bounded by a shard and an index part, never by the pool.

1. fit (one task, only for an index that needs training): an empty index of the
   plan's factory, trained on a sample of the base (IVF coarse centroids, PQ codebooks),
   written as ``trained.faiss``. An IVF index has lists of a constant size, so the scan
   per query stays constant as the base grows (:class:`curation.index.IndexSettings`).
2. coarse (one task per query shard, only for an HNSW coarse quantizer, the CPU one):
   each query's ``nprobe`` lists, ``coarse/QQQQQ.npz``, which every part then searches
   (preassigned), so more parts cost no more quantizer work.
3. search (one task per index part, a run of base shards holding at most
   ``part_vectors``): the part's shards are added to a copy of the trained index (a flat
   one for exact search), and every query shard is searched against it, its top k above
   the threshold committed as ``parts/PPPPP/QQQQQ.parquet``.
4. merge (one task per query shard): the parts' lists merged into the top k of the whole
   base (without the query itself when queries are the base), ranked, committed as
   ``neighbours/QQQQQ.parquet`` (schema ``neighbours/1``); the parts' files of that
   shard are then removed.

A search task reads every query shard once, so its reads grow with parts x queries:
``part_vectors`` should be as large as a task's memory (a GPU's) allows.

Every file is committed atomically and a rerun does only what is missing, so a killed
search resumes where it stopped. The top k of the parts' top k lists is the top k of the
whole base, so exact parts give exact search; an IVF index is one quantizer trained once
and shared by every part, so its parts split one index's lists.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from curation.descriptor_space import DescriptorSpace
from curation.index import (
    IndexSettings,
    empty_index,
    gpu_count,
    is_plain_ivf,
    quantizer_is_flat,
    ready_for_search,
    search,
    train_index,
    training_points,
    tune_quantizer,
)
from curation.tasks import ItemCounter, ShardRunner, ShardTasks
from curation.vector_shards import VectorShards
from manifests.atomic import atomic_path, write_bytes_atomic
from manifests.job import claim_directory
from manifests.parquet_io import ShardedParquet, shard_stem
from manifests.schemas import NEIGHBOURS

log = logging.getLogger(__name__)

TRAINED = "trained.faiss"
TRAINED_INFO = "trained.json"  # its factory, and whether queries are preassigned to lists
COARSE = "coarse"  # each query shard's IVF lists


@dataclass(frozen=True)
class SearchPlan:
    """What every task of one sharded search needs (pickled to each)."""

    base: VectorShards
    queries: VectorShards
    k: int
    index: IndexSettings
    threshold: float = -math.inf  # only neighbours above this similarity are kept
    exclude_self: bool = False  # queries are the base: a vector is not its own neighbour
    space: DescriptorSpace | None = None  # applied to both sides; None: vectors as stored

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        if self.space is None:
            return np.ascontiguousarray(vectors, dtype=np.float32)
        return self.space.apply(vectors)

    def parts(self) -> list[list[int]]:
        """Base shard positions of each index part: runs of shards, at most
        ``part_vectors`` vectors each (or a single larger shard)."""
        parts: list[list[int]] = []
        held = 0
        for position in range(len(self.base.shards)):
            size = int(self.base.starts[position + 1] - self.base.starts[position])
            if not parts or held + size > self.index.part_vectors:
                parts.append([])
                held = 0
            parts[-1].append(position)
            held += size
        return parts

    def describe(self) -> dict:
        """What the results depend on: a rerun with other settings refuses to resume."""
        return {
            "base": [self.base.root, len(self.base)],
            "queries": [self.queries.root, len(self.queries)],
            "k": self.k, "threshold": self.threshold, "exclude_self": self.exclude_self,
            "index": asdict(self.index) | {"use_gpu": None, "batch": None},
            "space": None if self.space is None else self.space.mode,
        }  # fmt: skip


def run_search(
    plan: SearchPlan,
    out: str | Path,
    runner: ShardRunner,
    progress: bool = True,
    desc: str = "search",
) -> ShardedParquet:
    """Run the plan's tasks into ``out`` (see the module docstring); returns the
    ``neighbours`` shards, one per query shard, in query-shard order."""
    out = Path(out)
    neighbours = ShardedParquet(out / "neighbours", NEIGHBOURS)
    claim_directory(out, "search.json", plan.describe(), bool(neighbours.complete()))
    gpus = 1.0 if plan.index.use_gpu else 0.0
    if _needs_training(plan) and not (out / TRAINED).exists():
        runner(ShardTasks(fit_index, [(plan, str(out))], f"{desc}: fit", gpus=gpus), progress)
    merged = set(neighbours.complete())
    queries = [q for q in range(len(plan.queries.shards)) if q not in merged]
    if _preassigned(out):
        todo = [(q, plan, str(out)) for q in queries if not _coarse_path(out, q).exists()]
        runner(ShardTasks(assign_queries, todo, f"{desc}: coarse", processes=0), progress)
    parts = plan.parts()
    tasks, searches = [], 0
    for p, shards in enumerate(parts):
        pending = _pending(plan, out, p, queries)
        if pending:
            tasks.append((p, shards, plan, str(out)))
            searches += sum(len(plan.queries.ids(q)) for q in pending)
    log.info("%s: %d index part(s), %d query shard(s) to search", desc, len(parts), len(queries))
    runner(ShardTasks(search_part, tasks, f"{desc}: search", searches, "query", gpus=gpus,
                      processes=1), progress)  # fmt: skip
    merges = [(q, len(parts), plan, str(out)) for q in queries]
    runner(ShardTasks(merge_neighbours, merges, f"{desc}: merge", processes=0), progress)
    for done in ("parts", COARSE):  # every query shard is merged
        shutil.rmtree(out / done, ignore_errors=True)
    return neighbours


def _part_store(out: str | Path, part: int) -> ShardedParquet:
    return ShardedParquet(Path(out) / "parts" / shard_stem(part), NEIGHBOURS)


def _pending(plan: SearchPlan, out: str | Path, part: int, queries: list[int]) -> list[int]:
    done = set(_part_store(out, part).complete())
    return [q for q in queries if q not in done]


def _needs_training(plan: SearchPlan) -> bool:
    return len(plan.base) > 0 and not empty_index(_dim(plan), _factory(plan, 0)).is_trained


def _factory(plan: SearchPlan, gpus: int) -> str:
    return plan.index.factory_for(len(plan.base), gpus)


def fit_index(plan: SearchPlan, out: str, on_items: ItemCounter | None = None) -> None:
    """Train the plan's index on a sample of the base (:func:`training_points`) and commit
    it as ``trained.faiss``."""
    factory = _factory(plan, gpu_count(plan.index.use_gpu))
    index = empty_index(_dim(plan), factory, plan.index.quantizer_ef_search)
    sample = plan.prepare(plan.base.sample(training_points(index, plan.index.train_per_list)))
    log.info("training %s on %d vectors", factory, len(sample))
    train_index(index, sample)
    # a quantizer other than flat (HNSW, on CPUs) assigns each query once, for all parts
    preassign = is_plain_ivf(index) and not quantizer_is_flat(index)
    write_bytes_atomic(
        Path(out) / TRAINED_INFO, json.dumps({"factory": factory, "preassign": preassign}).encode()
    )
    with atomic_path(Path(out) / TRAINED) as tmp:
        faiss.write_index(index, str(tmp))


def _preassigned(out: Path) -> bool:
    info = out / TRAINED_INFO
    return info.exists() and json.loads(info.read_text())["preassign"]


def _coarse_path(out: str | Path, q: int) -> Path:
    return Path(out) / COARSE / f"{shard_stem(q)}.npz"


def assign_queries(q: int, plan: SearchPlan, out: str, on_items: ItemCounter | None = None) -> None:
    """Commit the ``nprobe`` nearest IVF lists of query shard ``q``'s vectors (and their
    similarities), which every part's search of that shard then uses."""
    index = faiss.read_index(str(Path(out) / TRAINED))  # held: the IVF view below is its own
    tune_quantizer(index, plan.index.quantizer_ef_search)
    x = plan.prepare(plan.queries.read(q))
    similarity, lists = faiss.extract_index_ivf(index).quantizer.search(x, plan.index.nprobe)
    path = _coarse_path(out, q)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, lists=lists, similarity=similarity)


def _dim(plan: SearchPlan) -> int:
    """The dimension searched: the stored one, or the descriptor space's."""
    return plan.prepare(np.ones((1, plan.base.dim), np.float32)).shape[1]


def search_part(
    part: int, positions: list[int], plan: SearchPlan, out: str, on_items: ItemCounter | None = None
) -> None:
    """Build index part ``part`` from the base shards at ``positions`` and commit the top
    k of every query shard not yet searched against it (or merged)."""
    store = _part_store(out, part)
    merged = set(ShardedParquet(Path(out) / "neighbours", NEIGHBOURS).complete())
    todo = [q for q in range(len(plan.queries.shards)) if q not in merged]
    todo = [q for q in todo if q not in set(store.complete())]
    if not todo:
        return
    store.remove_partial()
    index, base_ids = _part_index(plan, out, positions)
    k = min(plan.k, len(base_ids))
    preassigned = _preassigned(Path(out))
    for q in todo:
        x = plan.prepare(plan.queries.read(q))
        if k == 0 or len(x) == 0:
            sims, local = np.zeros((len(x), 0), np.float32), np.zeros((len(x), 0), np.int64)
        else:
            coarse = np.load(_coarse_path(out, q)) if preassigned else None
            lists = None if coarse is None else (coarse["lists"], coarse["similarity"])
            sims, local = search(index, x, k, plan.index.batch, lists)
        store.write(q, _top_table(plan.queries.ids(q), sims, local, base_ids, plan.threshold))
        if on_items is not None:
            on_items(len(x), len(x))


def _part_index(plan: SearchPlan, out: str, positions: list[int]) -> tuple[faiss.Index, np.ndarray]:
    trained = Path(out) / TRAINED
    exact = not trained.exists()
    index = empty_index(_dim(plan), "Flat") if exact else faiss.read_index(str(trained))
    index = ready_for_search(index, plan.index)
    for position in positions:
        index.add(plan.prepare(plan.base.read(position)))
    ids = (
        np.concatenate([plan.base.ids(p) for p in positions])
        if positions
        else np.zeros(0, np.int64)
    )
    return index, ids


def _top_table(
    query_ids: np.ndarray,
    sims: np.ndarray,
    local: np.ndarray,
    base_ids: np.ndarray,
    threshold: float,
) -> pa.Table:
    """Rows (query, base, similarity, rank) of a search's results above ``threshold``."""
    k = sims.shape[1]
    keep = (local >= 0) & (sims > threshold)
    rows, rank = np.nonzero(keep)
    return pa.table({
        "query": pa.array(query_ids[rows], pa.int64()),
        "base": pa.array(base_ids[local[rows, rank]], pa.int64()),
        "similarity": pa.array(sims[rows, rank], pa.float32()),
        "rank": pa.array(rank if k else np.zeros(0, np.int64), pa.int32()),
    })  # fmt: skip


def merge_neighbours(
    q: int, parts: int, plan: SearchPlan, out: str, on_items: ItemCounter | None = None
) -> None:
    """Merge query shard ``q``'s lists from every part into its top k, commit it, and
    remove the parts' files of that shard."""
    tables = [_part_store(out, p).read_shard(q) for p in range(parts)]
    table = pa.concat_tables(tables) if tables else NEIGHBOURS.arrow.empty_table()
    query = table.column("query").to_numpy()
    base = table.column("base").to_numpy()
    sims = table.column("similarity").to_numpy()
    order = np.lexsort((base, -sims, query))  # each query's by falling similarity
    query, base, sims = query[order], base[order], sims[order]
    keep = ranks(query) < plan.k
    if plan.exclude_self:
        keep &= query != base
    query, base, sims = query[keep], base[keep], sims[keep]
    ShardedParquet(Path(out) / "neighbours", NEIGHBOURS).write(q, pa.table({
        "query": query, "base": base, "similarity": sims.astype(np.float32),
        "rank": ranks(query).astype(np.int32),
    }))  # fmt: skip
    for p in range(parts):
        _part_store(out, p).path(q).unlink(missing_ok=True)
    if on_items is not None:
        on_items(1, 1)


def ranks(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each entry within its run of equal keys (keys sorted)."""
    return np.arange(len(sorted_keys)) - np.searchsorted(sorted_keys, sorted_keys)
