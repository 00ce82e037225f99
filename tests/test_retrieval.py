"""Retrieval on synthetic embeddings with known structure: k-means, IVF-PQ, the three
strategies, provenance merging, and an LVD manifest the trainer reads."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.hierarchical_kmeans import HierarchyConfig, LevelConfig
from curation.index import KMeansConfig, SearchConfig, build_search_index, kmeans, search
from curation.lvd_manifest import PoolInputs, RetrievalConfig, write_lvd_manifest
from curation.retrieval import Candidates, SeedSetPlan, merge_provenance
from manifests.config import ConfigError, load_config
from manifests.embeddings import EmbeddingStore
from manifests.errors import ManifestError
from manifests.parquet_io import read_manifest
from manifests.schemas import DEDUP, LVD
from pipelines import retrieve as retrieve_cli
from pipelines.demo.synthetic_images import encode, make_photo
from training.data.dataset import ManifestImageDataset

DIM, CLUSTERS, PER_CLUSTER = 16, 8, 50


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n_clusters: int, per: int, dim: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((n_clusters, dim)))
    labels = np.repeat(np.arange(n_clusters), per)
    return _unit(centres[labels] + spread * rng.standard_normal((len(labels), dim))), labels


def _embeddings(root, ids, vectors, model="synthetic", shard=64) -> str:
    store = EmbeddingStore(root)
    store.claim({"model": model, "dim": vectors.shape[1]})
    for index, start in enumerate(range(0, len(ids), shard)):
        part = slice(start, start + shard)
        store.write(index, list(ids[part]), np.ones(len(ids[part]), bool), vectors[part])
    return str(root)


@pytest.fixture
def world(tmp_path):
    vectors, labels = clustered(CLUSTERS, PER_CLUSTER, DIM, spread=0.05)
    ids = [f"p{i:03d}" for i in range(len(vectors))]
    (tmp_path / "img").mkdir()
    for i in range(0, len(ids), 25):  # a few real files: the trainer decodes these
        (tmp_path / "img" / f"{ids[i]}.jpg").write_bytes(encode(make_photo(i, 64, 48)))
    pq.write_table(pa.table({"id": ids, "path": [f"img/{i}.jpg" for i in ids]}),
                   tmp_path / "pool.parquet")  # fmt: skip
    dropped = set(ids[1::10])  # the dedup stage dropped these
    dedup = pa.table({"id": ids, "exact_group": range(len(ids)), "hash_group": range(len(ids)),
                      "copy_component": range(len(ids)), "keep": [i not in dropped for i in ids],
                      "reason": [None] * len(ids), "representative": ids})  # fmt: skip
    (tmp_path / "dedup" / "dedup").mkdir(parents=True)
    pq.write_table(dedup.cast(DEDUP.arrow), tmp_path / "dedup" / "dedup" / "00000.parquet")
    embeddings = _embeddings(tmp_path / "emb", ids, vectors)
    pool = PoolInputs([str(tmp_path / "pool.parquet")], embeddings, str(tmp_path / "dedup"))
    return {"root": tmp_path, "ids": ids, "vectors": vectors, "labels": labels,
            "dropped": dropped, "pool": pool}  # fmt: skip


def _seed_set(world, name: str, vectors: np.ndarray, **plan) -> SeedSetPlan:
    ids = [f"{name}-{i}" for i in range(len(vectors))]
    root = world["root"] / f"seed-{name}"
    return SeedSetPlan(name=name, embeddings=_embeddings(root, ids, vectors), **plan)


def test_kmeans_recovers_separated_clusters_and_ivfpq_agrees_with_exact_search():
    vectors, labels = clustered(12, 300, 32, spread=0.1)
    _, assignment = kmeans(vectors, KMeansConfig(k=12, niter=25, nredo=10))
    pairs = set(zip(assignment.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 12  # every cluster found whole

    queries = vectors[::7] + 0.01
    exact = search(build_search_index(vectors, SearchConfig()), queries, 4)[1]
    ivfpq = build_search_index(vectors, SearchConfig(exact_max=0))  # IVF-PQ, refined
    approx = search(ivfpq, queries, 4)[1]
    recall = np.mean([len(set(a) & set(e)) / 4 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95


@pytest.mark.parametrize("part_vectors", [2_000_000, 100])  # one index, or four parts
def test_three_strategies_dedup_filter_merged_provenance_and_a_trainable_manifest(
    world, part_vectors
):
    vectors, labels, ids = world["vectors"], world["labels"], world["ids"]
    rng = np.random.default_rng(5)
    near = _unit(vectors[[3, 110, 111]] + 0.01 * rng.standard_normal((3, DIM)))  # 110: cluster 2
    in_cluster = lambda c, n: _unit(vectors[labels == c][:n] + 0.02)  # noqa: E731
    clustered_seeds = np.concatenate([in_cluster(2, 4), in_cluster(5, 5), in_cluster(6, 2)])
    whole = world["root"] / "whole.parquet"
    paths = [f"img/{ids[0]}.jpg", f"img/{ids[25]}.jpg"]
    pq.write_table(pa.table({"id": ["w0", "w1"], "path": paths}), whole)
    config = RetrievalConfig(
        pool=world["pool"],
        seed_sets=[
            _seed_set(world, "near", near, method="sample", k=3),
            _seed_set(world, "clus", clustered_seeds, method="cluster", min_seeds=3,
                      per_cluster=20, cap=30),
            SeedSetPlan(name="whole", method="as_is", manifest=[str(whole)]),
        ],
        kmeans=KMeansConfig(k=CLUSTERS, niter=25, nredo=10),
        search=SearchConfig(part_vectors=part_vectors),
    )  # fmt: skip
    stats = write_lvd_manifest(config, world["root"] / "out")
    table = read_manifest([world["root"] / "out" / "lvd"], LVD)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows  # one row per image

    kept = np.array([i not in world["dropped"] for i in ids])
    for s, seed in enumerate(near):  # sample: exactly the 3 nearest kept pool images
        sims = np.where(kept, vectors @ seed, -np.inf)
        truth = {ids[j] for j in np.argsort(-sims)[:3]}
        assert truth == {i for i, r in rows.items() if f"near-{s}" in (r["seed_ids"] or [])}
    clus = [r for r in rows.values() if "clus" in r["seed_sets"]]
    assert len(clus) == 30  # 2 clusters with > 3 seeds x 20, then the cap of 30
    assert {labels[ids.index(r["id"])] for r in clus} == {2, 5}
    assert not set(rows) & world["dropped"]  # only kept pool images
    both = [r for r in rows.values() if {"near", "clus"} <= set(r["seed_sets"])]
    assert both and all(set(r["methods"]) == {"sample", "cluster"} for r in both)
    assert all(r["cluster"] is not None and r["seed_ids"] for r in both)
    assert rows["w0"]["methods"] == ["as_is"] and rows["w0"]["path"].endswith(f"{ids[0]}.jpg")
    by_set = {e["seed_set"]: e for e in stats["seed_sets"]}
    assert by_set["clus"] == {"seed_set": "clus", "method": "cluster", "seed_images": 11,
                              "retrieved": 40, "after_cap": 30}  # fmt: skip
    assert json.loads((world["root"] / "out" / "retrieval_stats.json").read_text()) == stats

    decodable = world["root"] / "decodable.parquet"  # the trainer reads the LVD rows
    pq.write_table(table.filter(pa.compute.is_in(table.column("id"),
                   pa.array(["w0", "w1"]))), decodable)  # fmt: skip
    dataset = ManifestImageDataset.from_manifests([decodable])
    assert len(dataset) == 2 and dataset[0].shape == (3, 48, 64)


def test_seed_sets_of_another_model_and_bad_configs_are_refused(world, tmp_path):
    other = SeedSetPlan("other", _embeddings(tmp_path / "o", ["o0"], world["vectors"][:1],
                                             model="vit:run"))  # fmt: skip
    with pytest.raises(ManifestError, match="embedded with 'vit:run'"):
        write_lvd_manifest(RetrievalConfig(pool=world["pool"], seed_sets=[other]), tmp_path / "out")
    path = tmp_path / "r.yaml"
    path.write_text("pool: {manifest: [p], embeddings: e}\nseed_sets:\n"
                    "  - {name: a, embeddings: x, method: nearest}\n")  # fmt: skip
    config = load_config(RetrievalConfig, path)
    assert config.seed_sets[0].name == "a"  # lists of sections load as dataclasses
    with pytest.raises(Exception, match="method 'nearest' not in"):
        write_lvd_manifest(config, tmp_path / "out")


def test_paper_k_per_seed_set():
    assert SeedSetPlan("imagenet1k").neighbours == 32
    assert SeedSetPlan("imagenet22k").neighbours == SeedSetPlan("gldv2").neighbours == 4
    assert SeedSetPlan("imagenet1k", k=8).neighbours == 8


def test_retrieve_cli_from_a_yaml_config(world, tmp_path, capsys):
    seeds = _seed_set(world, "near", world["vectors"][:2], method="sample", k=2)
    pool = world["pool"]
    config = tmp_path / "r.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "pool": {"manifest": pool.manifest, "embeddings": pool.embeddings, "dedup": pool.dedup},
        "seed_sets": [{"name": "near", "embeddings": seeds.embeddings, "method": "sample",
                       "k": 2}]}))  # fmt: skip
    assert retrieve_cli.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["seed_sets"][0]["after_cap"] == 4
    assert retrieve_cli.main(["--config", str(tmp_path / "none.yaml"), "--out", "x"]) == 2
    assert "none.yaml: cannot read config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config, message",
    [
        (RetrievalConfig(seed_sets=[SeedSetPlan("a")]), "pool.manifest and pool.embeddings"),
        (RetrievalConfig(pool=PoolInputs(["p"], "e")), "at least one seed set"),
        (RetrievalConfig(pool=PoolInputs(["p"], "e"), seed_sets=[SeedSetPlan("g", method="as_is")]),
         "seed set g: as_is needs its manifest"),
    ],
)  # fmt: skip
def test_incomplete_retrieval_configs_are_refused(config, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        write_lvd_manifest(config, tmp_path)


def test_merged_provenance_lists_seed_sets_in_the_recipes_order_every_time():
    """Aggregating on several threads gave the lists in a varying order (2 runs in 20
    here), so a rerun of the same build wrote a different manifest."""
    rows = np.arange(20_000)

    def candidates(pool_rows: np.ndarray, seed: str) -> Candidates:
        n = len(pool_rows)
        return Candidates(pool_rows, [f"{seed}:{r}" for r in pool_rows], np.ones(n, np.float32),
                          np.full(n, -1))  # fmt: skip

    for _ in range(20):
        merged = merge_provenance([("first", "sample", candidates(rows, "a")),
                                   ("second", "cluster", candidates(rows[::-1], "b"))])  # fmt: skip
        assert merged.column("pool_row").to_pylist() == rows.tolist()
        assert set(map(tuple, merged.column("seed_sets").to_pylist())) == {("first", "second")}
        assert set(map(tuple, merged.column("methods").to_pylist())) == {("sample", "cluster")}


def test_k_is_sized_to_a_small_pool_and_a_cluster_set_that_gets_nothing_says_why(world, caplog):
    vectors, labels = world["vectors"], world["labels"]
    seeds = _unit(vectors[labels == 2][:6] + 0.02)
    near = _seed_set(world, "near", seeds[:2], method="sample", k=2)
    hopeless = _seed_set(world, "clus", seeds, method="cluster", min_seeds=50)
    kmeans = KMeansConfig(k=10_000, niter=5)  # the local recipe's k is far above this pool
    candidates = len(world["ids"]) - len(world["dropped"])
    config = RetrievalConfig(pool=world["pool"], seed_sets=[near, hopeless], kmeans=kmeans)
    stats = write_lvd_manifest(config, world["root"] / "out")
    assert stats["kmeans"] == {"k": 10_000, "clusters": candidates // kmeans.min_cluster_size}
    assert "kmeans.k=10000: a pool of 360 candidates fills 45 clusters" in caplog.text
    clus = {e["seed_set"]: e for e in stats["seed_sets"]}["clus"]
    assert clus["after_cap"] == 0
    assert clus["note"].startswith("no cluster holds more than min_seeds=50 of its 6 seed images")
    config.seed_sets = [hopeless]
    with pytest.raises(
        ManifestError,
        match=r"no image retrieved for any seed set of 360 "
        r"candidates \(clus \(cluster\): no cluster holds",
    ):
        write_lvd_manifest(config, world["root"] / "out2")
    with pytest.raises(ConfigError, match="kmeans.k: expected at least 1 and at most 1000000000"):
        load_config(RetrievalConfig, None, ["kmeans.k=1000000000000000000000000"])


def _imbalanced_pool(root, sizes: list[int]) -> tuple[PoolInputs, list[str], np.ndarray]:
    rng = np.random.default_rng(1)
    centres = _unit(rng.standard_normal((len(sizes), DIM)))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    vectors = _unit(centres[labels] + 0.05 * rng.standard_normal((len(labels), DIM)))
    ids = [f"p{i:04d}" for i in range(len(labels))]
    (root / "img").mkdir(parents=True)
    for i in range(len(ids)):
        (root / "img" / f"{ids[i]}.jpg").write_bytes(encode(make_photo(i, 32, 24)))
    pq.write_table(pa.table({"id": ids, "path": [f"img/{i}.jpg" for i in ids]}),
                   root / "pool.parquet")  # fmt: skip
    pool = PoolInputs([str(root / "pool.parquet")], _embeddings(root / "emb", ids, vectors))
    return pool, ids, labels


def test_balanced_draws_evenly_from_an_imbalanced_pool_beside_a_retrieval_set(tmp_path):
    sizes = [400, 150, 40, 20, 12, 10]  # head to tail 40:1
    pool, ids, labels = _imbalanced_pool(tmp_path, sizes)
    hierarchy = HierarchyConfig(levels=[LevelConfig(24, 3), LevelConfig(6, 3)], niter=20,
                                min_cluster_size=2)  # fmt: skip
    seed_vectors = _unit(np.eye(1, DIM, dtype=np.float32))
    seeds = SeedSetPlan(
        name="near",
        method="sample",
        k=2,
        embeddings=_embeddings(tmp_path / "seeds", ["s0"], seed_vectors),
    )
    config = RetrievalConfig(pool=pool, hierarchy=hierarchy, seed_sets=[
        SeedSetPlan(name="web", method="balanced", size=60), seeds])  # fmt: skip
    stats = write_lvd_manifest(config, tmp_path / "out")
    rows = read_manifest([tmp_path / "out" / "lvd"], LVD).to_pylist()
    web = [r for r in rows if "web" in r["seed_sets"]]
    assert len(web) == 60 and all(r["methods"][0] == "balanced" for r in web)
    assert all(r["cluster"] is None and r["best_similarity"] is None for r in web)
    per_label = np.bincount([labels[ids.index(r["id"])] for r in web], minlength=len(sizes))
    # random draws would give the head 60 x 400/632 = 38; water-filling gives every
    # cluster about 10, all of the smallest
    assert per_label.max() <= 16 and per_label.min() >= 7, per_label
    assert {r["id"] for r in rows if "near" in r["seed_sets"]}  # the retrieval set beside it
    assert stats["hierarchy"] == [24, 6]
    top = stats["balance"]["web"][-1]
    assert sum(top["curated"]) == 60 and max(top["pool"]) >= 150
    assert max(top["curated"]) - min(top["curated"]) <= 2  # the top level is water-filled

    config.seed_sets = [SeedSetPlan(name="web", method="balanced", size=1300, multiplier=2)]
    write_lvd_manifest(config, tmp_path / "twice")
    table = read_manifest([tmp_path / "twice" / "lvd"], LVD)
    assert table.num_rows == 632 and max(table.column("copies").to_pylist()) == 2
    assert len(ManifestImageDataset.from_manifests([tmp_path / "twice" / "lvd"])) == 1264
    with pytest.raises(ConfigError, match="strategy 'nearest' not in"):
        load_config(RetrievalConfig, None, ["pool.manifest=[a]", "pool.embeddings=e",
                                            "seed_sets=[{name: w, method: balanced, "
                                            "strategy: nearest}]"]).validate()  # fmt: skip


def test_one_seed_set_sampled_around_and_clustered_keeps_both_retrievals(world):
    """The paper takes ImageNet-22k as is and samples around it; a seed set may have
    several plans, and the second's retrieval used to replace the first's."""
    vectors, labels = world["vectors"], world["labels"]
    seeds = _unit(vectors[labels == 3][:5] + 0.02)
    sample = _seed_set(world, "mine", seeds, method="sample", k=2)
    cluster = SeedSetPlan(name="mine", embeddings=sample.embeddings, method="cluster",
                          min_seeds=3, per_cluster=7)  # fmt: skip
    config = RetrievalConfig(pool=world["pool"], seed_sets=[sample, cluster],
                             kmeans=KMeansConfig(k=CLUSTERS, niter=25, nredo=5))  # fmt: skip
    write_lvd_manifest(config, world["root"] / "out")
    rows = read_manifest([world["root"] / "out" / "lvd"], LVD).to_pylist()
    methods = Counter(m for r in rows for m in r["methods"])
    assert methods["cluster"] == 7 and 2 <= methods["sample"] <= 10
