"""Hashing and deduplication on real photos (scikit-image's) with known edited copies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from builders import jpeg_bytes, path_manifest, skimage_photos
from curation.dedup.copy_graph import CopyGraphConfig
from curation.dedup.hashes import PCAHash, hamming_pairs, image_hashes
from curation.dedup.policy import representatives
from curation.dedup.stage import (
    DedupConfig,
    SearchRun,
    copy_settings,
    deduplicate,
    hash_and_dedup,
    hash_pool,
    image_reader,
)
from curation.dedup.union_find import UnionFind
from curation.descriptor_space import DescriptorSpace
from curation.embed import EmbedConfig, embed_manifests, load_embedder
from manifests.config import load_config
from manifests.embeddings import EmbeddingStore
from manifests.errors import ManifestError
from manifests.parquet_io import ShardedParquet
from manifests.schemas import HASHES
from pipelines import dedup as dedup_cli
from pipelines.demo.near_duplicates import edited_copy
from pipelines.demo.synthetic_images import make_photo

BASES = ("astronaut", "camera", "chelsea", "coffee", "horse", "rocket", "moon", "coins")
SINGLES = ("brick", "grass", "text", "page", "logo", "retina", "hubble_deep_field", "cell")
EXACT = BASES[:3]  # these also appear byte for byte twice
HASH_LEVEL = ("jpeg", "resize")  # pHash within the radius
COPY_LEVEL = ("flip", "crop")  # only the descriptor links them
EVALUATION = BASES[:2]  # an evaluation set holds colour-edited copies of these


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup")
    photos = skimage_photos(192)
    files: dict[str, bytes] = {}
    for i, name in enumerate(BASES):
        files[name] = jpeg_bytes(photos[name])
        if name in EXACT:
            files[f"{name}-exact"] = files[name]
        for kind in HASH_LEVEL + COPY_LEVEL:
            files[f"{name}-{kind}"] = jpeg_bytes(edited_copy(photos[name], kind, seed=i))
    files |= {name: jpeg_bytes(photos[name]) for name in SINGLES}
    files["broken"] = b"\xff\xd8 a truncated JPEG"  # hashed as a failed row, never fatal
    manifest = path_manifest(root, "pool", files)
    evaluation = path_manifest(root, "eval", {
        f"{name}-colour": jpeg_bytes(edited_copy(photos[name], "colour", seed=99))
        for name in EVALUATION
    })  # fmt: skip
    embedder = load_embedder("efficientnet_lite0")
    config = EmbedConfig(rows_per_shard=16, batch_size=16, num_workers=0)
    embed_manifests([manifest], embedder, root / "emb", config, progress=False)
    embed_manifests([evaluation], embedder, root / "eval-emb", config, progress=False)
    return {"root": root, "manifest": manifest, "ids": list(files),
            "emb": root / "emb", "eval_emb": root / "eval-emb"}  # fmt: skip


def _groups(table, column: str) -> set[frozenset[str]]:
    by_label: dict[int, set[str]] = {}
    for id_, label in zip(table.column("id").to_pylist(), table.column(column).to_pylist(),
                          strict=True):  # fmt: skip
        by_label.setdefault(label, set()).add(id_)
    return {frozenset(g) for g in by_label.values()}


# the pool is too small to learn a whitening: the paper's settings on centred descriptors,
# without geometric verification (the paper has none; tested below)
SMALL_POOL = CopyGraphConfig(normalize="center", threshold=0.6, relative_threshold=0.45,
                             verify=False)  # fmt: skip


@pytest.mark.parametrize("part_vectors", [2_000_000, 1])  # one index, or one per shard
def test_groups_components_and_kept_images_match_the_ground_truth(pool, tmp_path, part_vectors):
    copy = replace(SMALL_POOL, part_vectors=part_vectors)
    config = DedupConfig(rows_per_shard=10, num_workers=0, copy=copy)
    stats = hash_and_dedup([pool["manifest"]], tmp_path, pool["emb"], [pool["eval_emb"]], config,
                      progress=False)  # fmt: skip
    table = pq.read_table(tmp_path / "dedup")
    assert table.column("id").to_pylist() == pool["ids"]  # one row per pool image, in order

    exact = {g for g in _groups(table, "exact_group") if len(g) > 1}
    assert exact == {frozenset({n, f"{n}-exact"}) for n in EXACT}
    hashed = {g for g in _groups(table, "hash_group") if len(g) > 1}
    for name in BASES:
        (group,) = [g for g in hashed if name in g]
        assert {f"{name}-{k}" for k in HASH_LEVEL} <= group and f"{name}-flip" not in group
    copies = _groups(table, "copy_component")
    expected = {
        frozenset(
            {n, *(f"{n}-{k}" for k in HASH_LEVEL + COPY_LEVEL)}
            | ({f"{n}-exact"} if n in EXACT else set())
        )
        for n in BASES
    }
    assert copies == expected | {frozenset({s}) for s in (*SINGLES, "broken")}  # fmt: skip

    rows = {r["id"]: r for r in table.to_pylist()}
    for name in BASES:
        members = [rows[i] for i in next(g for g in copies if name in g)]
        if name in EVALUATION:  # the whole component goes, the base included
            assert {(r["keep"], r["reason"]) for r in members} == {(False, "evaluation_overlap")}
            continue
        assert [r["id"] for r in members if r["keep"]] == [name]  # most pixels, then smallest id
        assert {r["representative"] for r in members} == {name}
        assert rows[f"{name}-jpeg"]["reason"] == "hash_duplicate"
        assert rows[f"{name}-flip"]["reason"] == "copy_duplicate"
        assert rows[f"{name}-crop"]["reason"] in ("hash_duplicate", "copy_duplicate")
        if name in EXACT:
            assert rows[f"{name}-exact"]["reason"] == "exact_duplicate"
    assert all(rows[s]["keep"] and rows[s]["reason"] is None for s in SINGLES)

    n = len(pool["ids"])
    funnel = stats["funnel"]
    assert stats["undecodable"] == 1 and rows["broken"]["keep"]
    assert funnel["raw"] == n and funnel["after_exact"] == n - len(EXACT)
    assert funnel["after_copy"] == len(BASES) + len(SINGLES) + 1
    assert funnel["after_relative"] == funnel["after_copy"] - len(EVALUATION)
    assert funnel["after_exact"] >= funnel["after_hash"] >= funnel["after_copy"]
    assert json.loads((tmp_path / "dedup_stats.json").read_text())["funnel"] == funnel


def test_a_hash_pair_beyond_the_safe_radius_needs_the_descriptor(pool, tmp_path):
    """A pHash 3 bits apart (within phash_radius 8, beyond the safe 2) joins a copy, which
    the descriptor confirms, but not two different photos, nor anything unconfirmed."""
    config = DedupConfig(num_workers=0, pca_radius=0, pca_safe_radius=0, copy=SMALL_POOL)
    hashes = hash_pool([pool["manifest"]], tmp_path, config, progress=False).read()
    ids = hashes.column("id").to_pylist()
    phash = hashes.column("phash").fill_null(0).to_numpy().copy()  # null: the broken image
    planted = {"grass": "brick", "coffee-flip": "coffee"}  # different photos | a copy
    for member, of in planted.items():
        phash[ids.index(member)] = phash[ids.index(of)] ^ np.int64(1 << 3 | 1 << 20 | 1 << 40)
    hashes = hashes.set_column(hashes.schema.get_field_index("phash"), "phash", pa.array(phash))
    reader = image_reader([pool["manifest"]], ids)

    def joined(config: DedupConfig, embeddings: EmbeddingStore | None) -> dict[str, bool]:
        searches = SearchRun(tmp_path / f"search{len(list(tmp_path.iterdir()))}", progress=False)
        table, _ = deduplicate(hashes, embeddings, [], config, searches, reader)
        group = table.column("hash_group").to_numpy()
        return {m: bool(group[ids.index(m)] == group[ids.index(of)]) for m, of in planted.items()}

    assert joined(config, EmbeddingStore(pool["emb"])) == {"grass": False, "coffee-flip": True}
    assert joined(config, None) == {"grass": False, "coffee-flip": False}
    trusting = replace(config, phash_safe_radius=3)
    assert joined(trusting, None) == {"grass": True, "coffee-flip": True}


def test_each_image_verifies_only_its_nearest_candidates(pool, tmp_path):
    hashes = hash_pool([pool["manifest"]], tmp_path, DedupConfig(num_workers=0),
                       progress=False).read()  # fmt: skip
    reader = image_reader([pool["manifest"]], hashes.column("id").to_pylist())
    verified = {}
    for top in (1, 64):
        copy = replace(SMALL_POOL, verify=True, verify_from=0.0, verify_top=top)
        config = DedupConfig(num_workers=0, copy=copy)
        searches = SearchRun(tmp_path / f"search{top}", progress=False)
        _, stats = deduplicate(hashes, EmbeddingStore(pool["emb"]), [], config, searches, reader)
        verified[top] = stats["verification"]["verified_pairs"]
    n = hashes.num_rows
    assert verified[1] <= n < verified[64]  # one per image (a pair may be both's nearest)


@pytest.mark.parametrize("decodable", [0, 1])
def test_a_pool_with_fewer_than_two_images_to_compare_keeps_them_all(decodable, tmp_path):
    rows = [{"id": f"bad{i}", "ok": False, "error": "UnidentifiedImageError"} for i in range(3)]
    rows += [{"id": "good", "ok": True, "sha256": "0" * 64, "phash": 7, "thumb": bytes(256),
              "pixels": 100}][:decodable]  # fmt: skip
    table, stats = deduplicate(pa.Table.from_pylist(rows, schema=HASHES.arrow), None, [],
                               DedupConfig(), SearchRun(tmp_path))  # fmt: skip
    assert table.column("keep").to_pylist() == [True] * len(rows)
    assert stats["funnel"]["after_relative"] == len(rows)


def test_hash_only_without_embeddings(pool, tmp_path):
    stats = hash_and_dedup([pool["manifest"]], tmp_path, config=DedupConfig(num_workers=0),
                      progress=False)  # fmt: skip
    table = pq.read_table(tmp_path / "dedup")
    assert _groups(table, "copy_component") == _groups(table, "hash_group")
    funnel = stats["funnel"]
    assert funnel["after_copy"] == funnel["after_hash"] > len(BASES) + len(SINGLES) + 1


def test_streamed_union_find_equals_an_in_memory_reference():
    rng = np.random.default_rng(0)
    n, m = 5000, 4000
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    uf = UnionFind(n)
    for start in range(0, m, 333):  # edges arrive shard by shard
        uf.union(a[start : start + 333], b[start : start + 333])
    labels = uf.labels()
    assert np.array_equal(uf.labels(chunk=7), labels)  # found a few nodes at a time
    graph = coo_matrix((np.ones(m), (a, b)), shape=(n, n))
    count, reference = connected_components(graph, directed=False)
    assert len(np.unique(labels)) == count
    assert (
        len(set(zip(labels.tolist(), reference.tolist(), strict=True))) == count
    )  # same partition
    for label in np.unique(labels):  # each component is labelled by its smallest member
        assert label == np.flatnonzero(labels == label).min()


def test_multi_index_hashing_finds_the_same_pairs_as_brute_force():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (3000, 8), dtype=np.uint8)
    for i in range(0, 600, 2):  # plant pairs 0..5 bits apart
        codes[i + 1] = codes[i]
        bits = rng.choice(64, size=i % 6, replace=False)
        codes[i + 1, bits // 8] ^= (1 << (bits % 8)).astype(np.uint8)
    flat = set(zip(*(x.tolist() for x in hamming_pairs(codes, 4)), strict=True))
    multi = set(zip(*(x.tolist() for x in hamming_pairs(codes, 4, flat_max=0)), strict=True))
    bits_apart = np.unpackbits(codes[0:600:2] ^ codes[1:600:2], axis=1).sum(axis=1)
    planted = {(i, i + 1, int(d)) for i, d in zip(range(0, 600, 2), bits_apart, strict=True)
               if d <= 4}  # fmt: skip
    assert planted <= flat and flat == multi


def test_a_killed_run_resumes_to_identical_output(pool, tmp_path):
    cmd = [sys.executable, "-m", "pipelines.dedup", "--manifest", str(pool["manifest"]),
           "--embeddings", str(pool["emb"]), "--eval-embeddings", str(pool["eval_emb"]),
           "--set", "rows_per_shard=2", "--set", "copy.normalize=center",
           "--set", "copy.threshold=0.6", "--no-progress"]  # fmt: skip
    subprocess.run(cmd + ["--out", str(tmp_path / "straight")], check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (killed / "hashes" / "00001.parquet").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its DataLoader workers
    proc.wait()
    written = len(list((killed / "hashes").glob("*.parquet")))
    assert 2 <= written < len(pool["ids"]) / 2 and not (killed / "dedup_stats.json").exists()
    subprocess.run(cmd + ["--out", str(killed)], check=True, capture_output=True)

    assert pq.read_table(killed / "dedup").equals(pq.read_table(tmp_path / "straight" / "dedup"))
    hashes = [ShardedParquet(d / "hashes", HASHES).read() for d in (killed, tmp_path / "straight")]
    assert hashes[0].equals(hashes[1])


def test_shipped_config_is_the_defaults():
    assert load_config(DedupConfig, "configs/dedup/default.yaml") == DedupConfig()


def test_pca_hash_keeps_copies_close_and_distinct_images_apart():
    originals = [Image.fromarray(make_photo(seed, 96, 72)) for seed in range(160)]
    thumbs = [image_hashes(jpeg_bytes(im))["thumb"] for im in originals]
    copies = [image_hashes(jpeg_bytes(edited_copy(im, kind, seed=i), quality=60))["thumb"]
              for i, im in enumerate(originals[:20]) for kind in ("jpeg", "resize")]  # fmt: skip
    pca = PCAHash(64).fit(thumbs)
    bits = np.unpackbits(pca.codes(thumbs + copies), axis=1).astype(int)
    originals_bits, copy_bits = bits[:160], bits[160:]
    to_source = [int(np.abs(copy_bits[c] - originals_bits[c // 2]).sum()) for c in range(40)]
    apart = np.abs(originals_bits[:, None] - originals_bits[None]).sum(-1)[np.triu_indices(160, 1)]
    assert np.median(to_source) <= 2 and np.median(apart) >= 24
    assert np.mean(np.array(to_source) <= DedupConfig().pca_radius) >= 0.9
    assert np.mean(apart <= DedupConfig().pca_radius) < 0.001
    with pytest.raises(ValueError, match="needs at least 64 thumbnails"):
        PCAHash(64).fit(thumbs[:10])


def test_copy_settings_come_from_the_model_unless_set(pool):
    store = EmbeddingStore(pool["emb"])
    assert store.meta()["copy_detection"]["normalize"] == "whiten"  # EfficientNet's calibration
    resolved = copy_settings(CopyGraphConfig(), store, [EmbeddingStore(pool["eval_emb"])])
    assert (resolved.normalize, resolved.threshold) == ("whiten", 0.72)
    assert copy_settings(CopyGraphConfig(threshold=0.8), store, []).threshold == 0.8
    assert CopyGraphConfig().resolved(None).threshold == 0.6  # no recommendation: the paper's

    other = pool["root"] / "other-emb"
    shutil.copytree(pool["eval_emb"], other)
    meta = json.loads((other / "embed.json").read_text())
    (other / "embed.json").write_text(json.dumps(meta | {"model": "torchscript:sscd.pt"}))
    with pytest.raises(ManifestError, match="embedded with 'torchscript:sscd.pt'"):
        copy_settings(CopyGraphConfig(), store, [EmbeddingStore(other)])


def test_whitening_removes_what_all_descriptors_share():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(64)
    x = 5 * shared + rng.standard_normal((600, 64)) * rng.uniform(0.2, 3, 64)  # anisotropic
    centred = DescriptorSpace("center").fit(x).apply(x)
    white = DescriptorSpace("whiten", 32).fit(x).apply(x)
    raw = DescriptorSpace("none").apply(x)
    assert np.mean(raw[:300] @ raw[300:].T) > 0.8  # unrelated vectors look alike
    assert abs(np.mean(centred[:300] @ centred[300:].T)) < 0.05
    assert white.shape == (600, 32)
    top = np.linalg.svd(np.cov(white.T))[1]
    assert top[0] / top[-1] < 3  # whitened: no direction dominates
    assert DescriptorSpace("whiten", 32).fit(x[:20]).mode == "center"  # too few to whiten


def test_bad_dedup_settings_fail_clearly(pool, tmp_path, capsys):
    assert dedup_cli.main(["--manifest", str(pool["manifest"]), "--out", str(tmp_path),
                           "--eval-embeddings", str(pool["eval_emb"])]) == 2  # fmt: skip
    assert "--eval-embeddings needs --embeddings" in capsys.readouterr().err
    with pytest.raises(ValueError, match="copy.normalize 'pca': expected one of"):
        CopyGraphConfig(normalize="pca").resolved(None)
    with pytest.raises(ValueError, match="unknown keep policy 'newest'"):
        representatives(np.zeros(2, np.int64), np.ones(2), ["a", "b"], "newest")


def test_geometric_verification_merges_only_true_copies(pool, tmp_path):
    """Candidates from a cosine of 0.3 up (far below any threshold) are verified: the
    components it forms never join two different photos, and the feature-rich bases
    get all their edited copies back."""
    copy = replace(SMALL_POOL, verify=True, verify_from=0.3)
    config = DedupConfig(rows_per_shard=10, num_workers=0, copy=copy)
    stats = hash_and_dedup([pool["manifest"]], tmp_path, pool["emb"], config=config, progress=False)
    assert stats["verification"]["confirmed"] > 0 and stats["verification"]["refuted"] > 0
    table = pq.read_table(tmp_path / "dedup")
    for group in _groups(table, "copy_component"):
        assert len({i.split("-")[0] for i in group}) == 1, group  # one photo per component
    copies = _groups(table, "copy_component")
    for name in ("astronaut", "camera", "chelsea", "coffee", "coins"):
        family = {name, *(f"{name}-{k}" for k in HASH_LEVEL + COPY_LEVEL)}
        assert any(family <= g for g in copies), name
