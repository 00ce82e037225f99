"""The sharded kNN search (curation.sharded_search) and pool clustering against their
in-memory counterparts: equal results whatever the shards and parts, resume without
redoing finished work, IVF edge recall, and the union-find components of its graph."""

from __future__ import annotations

import numpy as np
import pytest

from curation.dedup.union_find import UnionFind
from curation.descriptor_space import DescriptorSpace
from curation.index import IndexSettings, KMeansConfig, kmeans
from curation.local_runner import run_locally
from curation.retrieval import cluster_pool
from curation.sharded_search import SearchPlan, run_search, search_part
from curation.tasks import ShardTasks
from curation.vector_shards import VectorShards
from manifests.embeddings import EmbeddingStore
from manifests.job import ResumeMismatchError

DIM = 32


def planted_pool(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from 50 topics (two of a topic at cosine ~0.3); every fifth has two
    near copies (cosine > 0.95). Returns (vectors, expected copy group of each)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32) * 0.3
    x += rng.standard_normal((50, DIM)).astype(np.float32)[rng.integers(0, 50, n)] * 0.25
    group = np.arange(n)
    for start in range(0, n - 2, 5):
        for offset in (1, 2):
            x[start + offset] = x[start] + 0.01 * rng.standard_normal(DIM)
            group[start + offset] = start
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32), group  # as an embedding shard stores it


def write_store(root, vectors: np.ndarray, shard: int, broken: set[int] = frozenset()) -> list:
    """An embedding directory of ``shard`` rows per shard; ``broken`` rows are not ok."""
    store = EmbeddingStore(root)
    ids = [f"v{i}" for i in range(len(vectors))]
    for index, start in enumerate(range(0, len(vectors), shard)):
        rows = range(start, min(start + shard, len(vectors)))
        ok = np.array([i not in broken for i in rows])
        store.write(index, [ids[i] for i in rows], ok, vectors[start : start + shard])
    return ids


def exact_neighbours(queries, base, k, exclude_self=False) -> list[set]:
    sims = queries @ base.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [set(row.tolist()) for row in top]


def as_sets(neighbours, n: int) -> list[set]:
    table = neighbours.read()
    found = [set() for _ in range(n)]
    for q, b in zip(
        table.column("query").to_pylist(), table.column("base").to_pylist(), strict=True
    ):
        found[q].add(b)
    return found


class CountingRunner:
    """The local runner, counting tasks and the items they report."""

    def __init__(self) -> None:
        self.tasks: dict[str, int] = {}
        self.items: dict[str, int] = {}

    def __call__(self, work: ShardTasks, progress: bool = True) -> None:
        name = work.fn.__name__
        self.tasks[name] = self.tasks.get(name, 0) + len(work.tasks)
        for task in work.tasks:
            work.fn(*task, on_items=lambda done, ok, name=name: self._count(name, done))

    def _count(self, name: str, done: int) -> None:
        self.items[name] = self.items.get(name, 0) + done


@pytest.mark.parametrize("part_vectors", [10_000, 130, 37])
def test_sharded_search_equals_exact_search_whatever_the_parts(tmp_path, part_vectors):
    x, _ = planted_pool(600)
    write_store(tmp_path / "emb", x, shard=64, broken={5, 300})
    pool, ids = VectorShards.select(str(tmp_path / "emb"))
    kept = np.array([i not in (5, 300) for i in range(len(x))])
    assert ids == [f"v{i}" for i in np.flatnonzero(kept)] and len(pool) == 598
    assert np.array_equal(pool.gather(np.array([0, 5, 597])), x[kept][[0, 5, 597]])

    plan = SearchPlan(pool, pool, 6, IndexSettings(part_vectors=part_vectors), exclude_self=True)
    neighbours = run_search(plan, tmp_path / "search", run_locally, progress=False)
    assert len(plan.parts()) == -(-len(pool.shards) // max(1, part_vectors // 64))
    # k + 1 with itself, then itself dropped: k nearest others
    expected = exact_neighbours(x[kept], x[kept], 5, exclude_self=True)
    found = as_sets(neighbours, len(pool))
    assert sum(f == e for f, e in zip(found, expected, strict=True)) >= 0.99 * len(pool)  # ties
    table = neighbours.read()
    ranks = table.column("rank").to_numpy()
    assert (
        ranks.max() == 4
        and (table.column("query").to_numpy() != table.column("base").to_numpy()).all()
    )
    sims = table.column("similarity").to_numpy()
    by_rank = sims.reshape(-1, 5)  # every query has 5, by falling similarity
    assert (np.diff(by_rank, axis=1) <= 1e-6).all()
    assert not (tmp_path / "search" / "parts").exists()  # merged, then removed


def test_threshold_and_cross_search_with_a_descriptor_space(tmp_path):
    x, _ = planted_pool(400)
    write_store(tmp_path / "pool", x, shard=50)
    seed_vectors = (x[::40] + 0.001).astype(np.float16).astype(np.float32)
    write_store(tmp_path / "seeds", seed_vectors, shard=4)
    pool, _ = VectorShards.select(str(tmp_path / "pool"))
    seeds, _ = VectorShards.select(str(tmp_path / "seeds"))
    space = DescriptorSpace("center").fit(pool.sample(10_000))
    plan = SearchPlan(pool, seeds, 3, IndexSettings(part_vectors=120), threshold=0.9, space=space)
    table = run_search(plan, tmp_path / "s", run_locally, progress=False).read()
    q, b = space.apply(seed_vectors), space.apply(x)
    sims = q @ b.T
    expected = {(i, j) for i, row in enumerate(exact_neighbours(q, b, 3)) for j in row
                if sims[i, j] > 0.9}  # fmt: skip
    found = set(
        zip(table.column("query").to_pylist(), table.column("base").to_pylist(), strict=True)
    )
    assert found == expected and len(found) >= 10  # each seed's copies of its original
    assert np.allclose(table.column("similarity").to_numpy(),
                       sims[table.column("query").to_numpy(), table.column("base").to_numpy()],
                       atol=1e-5)  # fmt: skip


def test_ivf_search_finds_the_copies_and_union_find_their_groups(tmp_path):
    x, group = planted_pool(6000)
    write_store(tmp_path / "emb", x, shard=1000)
    pool, _ = VectorShards.select(str(tmp_path / "emb"))
    settings = IndexSettings(exact_max=0, list_size=100, nprobe=8, part_vectors=2500)
    plan = SearchPlan(pool, pool, 5, settings, threshold=0.9, exclude_self=True)
    runner = CountingRunner()
    neighbours = run_search(plan, tmp_path / "s", runner, progress=False)
    assert (tmp_path / "s" / "trained.faiss").exists() and len(plan.parts()) == 3
    # an HNSW quantizer (CPU) assigns each query shard's lists once, for the three parts
    assert runner.tasks == {"fit_index": 1, "assign_queries": 6, "search_part": 3,
                            "merge_neighbours": 6}  # fmt: skip
    assert not (tmp_path / "s" / "coarse").exists()
    uf = UnionFind(len(pool))
    for _, table in neighbours.iter_shards():
        uf.union(table.column("query").to_numpy(), table.column("base").to_numpy())
    labels = uf.labels()
    assert np.array_equal(labels, group)  # every planted copy group, nothing else


def test_a_killed_search_resumes_without_redoing_finished_shards(tmp_path):
    x, _ = planted_pool(500)
    write_store(tmp_path / "emb", x, shard=100)
    pool, _ = VectorShards.select(str(tmp_path / "emb"))
    plan = SearchPlan(pool, pool, 4, IndexSettings(part_vectors=200), exclude_self=True)
    first = CountingRunner()
    out = tmp_path / "s"
    before = run_search(plan, out, first, progress=False).read()
    assert first.tasks == {"search_part": 3, "merge_neighbours": 5}
    assert first.items["search_part"] == 3 * 500  # every part searched every query

    # killed while merging, after part 0 had searched query shard 2 again but not 3
    (out / "neighbours" / "00002.parquet").unlink()
    (out / "neighbours" / "00003.parquet").unlink()
    search_part(0, plan.parts()[0], plan, str(out))
    (out / "parts" / "00000" / "00003.parquet").unlink()
    again = CountingRunner()
    after = run_search(plan, out, again, progress=False).read()
    assert again.tasks == {"search_part": 3, "merge_neighbours": 2}
    assert again.items["search_part"] == 100 + 2 * 200  # part 0: shard 3; parts 1, 2: both
    assert after.equals(before)


def test_other_settings_refuse_to_resume_in_the_same_directory(tmp_path):
    x, _ = planted_pool(100)
    write_store(tmp_path / "emb", x, shard=50)
    pool, _ = VectorShards.select(str(tmp_path / "emb"))
    plan = SearchPlan(pool, pool, 4, IndexSettings(), exclude_self=True)
    run_search(plan, tmp_path / "s", run_locally, progress=False)
    with pytest.raises(ResumeMismatchError, match="k: 4 -> 5"):
        run_search(SearchPlan(pool, pool, 5, IndexSettings(), exclude_self=True), tmp_path / "s",
                   run_locally, progress=False)  # fmt: skip


def test_pool_clustering_equals_kmeans_in_memory_and_resumes_shard_by_shard(tmp_path):
    x, _ = planted_pool(600)
    write_store(tmp_path / "emb", x, shard=100)
    pool, _ = VectorShards.select(str(tmp_path / "emb"))
    config = KMeansConfig(k=10, niter=5, use_gpu=False)  # 600 <= 10 x 256: trained on all
    first = CountingRunner()
    clusters = cluster_pool(pool, config, tmp_path / "w", first, progress=False)
    assert first.tasks == {"fit_centroids": 1, "assign_shard": 6}
    centroids, assignment = kmeans(x, config)
    assert np.allclose(clusters.centroids, centroids, atol=1e-6)
    assert np.array_equal(clusters.assignment, assignment)
    assert np.allclose(clusters.similarity, np.einsum("ij,ij->i", x, centroids[assignment]),
                       atol=1e-5)  # fmt: skip

    (work,) = (tmp_path / "w").glob("kmeans-*")
    (work / "assignment" / "00003.parquet").unlink()  # killed before this shard's commit
    again = CountingRunner()
    resumed = cluster_pool(pool, config, tmp_path / "w", again, progress=False)
    assert again.tasks == {"assign_shard": 1}
    assert np.array_equal(resumed.assignment, clusters.assignment)
