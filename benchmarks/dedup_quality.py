"""Copy-detection quality and speed of the dedup stage. Prints JSON.

Real images shipped by Debian packages (opencv-doc examples, mate-backgrounds,
tuxpaint-stamps-default; installed when missing and run as root) plus scikit-image's, each
unique by content. A random subset are base images; each gets one edited copy per
transform in :mod:`pipelines.demo.near_duplicates`; the rest are distractors. For each method
(pHash, PCA hash, descriptor, and all combined as the dedup stage runs them) at the
default thresholds: pair precision, recall and F1 over the predicted components, and
recall per transform. Then throughput (hashing, embedding, images/s) and the kNN graph
plus components on 1e5 and 1e6 synthetic 512-d descriptors.

    python benchmarks/dedup_quality.py [--bases 100] [--workdir DIR] [--graph-sizes 1e5,1e6]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curation.dedup.copy_graph import CopyGraphConfig, DescriptorSpace, knn_edges
from curation.dedup.hashes import PCAHash, hamming_pairs, int64_codes
from curation.dedup.stage import (
    DedupConfig,
    aligned_vectors,
    copy_settings,
    deduplicate,
    hash_pool,
    image_reader,
)
from curation.dedup.union_find import UnionFind
from curation.embed import EmbedConfig, embed_manifests, load_embedder
from manifests.embeddings import EmbeddingStore
from pipelines.demo.near_duplicates import TRANSFORMS, edited_copy
from pipelines.demo.photos import ensure_packages, real_photos

MAX_SIDE = 384  # images are stored at most this large, as a crawl with max_side would
REPORTED_COPY_SETTINGS = (
    "normalize",
    "threshold",
    "k",
    "verify",
    "verify_from",
    "verify_until",
    "min_inliers",
    "min_inlier_fraction",
    "max_residual_px",
    "min_coverage",
)


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_pool(images: dict[str, Image.Image], n_bases: int, out: Path, seed: int = 0):
    """Manifest of bases, their edited copies and distractors; family (base index or -1)
    and transform per row."""
    rng = np.random.default_rng(seed)
    names = sorted(images)
    bases = set(rng.choice(len(names), size=min(n_bases, len(names) // 2), replace=False).tolist())
    (out / "images").mkdir(parents=True, exist_ok=True)
    ids, family, kind = [], [], []

    def add(id_: str, image: Image.Image, fam: int, k: str) -> None:
        (out / "images" / f"{len(ids):06d}.jpg").write_bytes(_jpeg(image))
        ids.append(id_)
        family.append(fam)
        kind.append(k)

    for i, name in enumerate(names):
        add(name, images[name], i if i in bases else -1, "original" if i in bases else "other")
        if i in bases:
            for t in TRANSFORMS:
                add(f"{name}#{t}", edited_copy(images[name], t, seed=seed * 100_000 + i), i, t)
    paths = [f"images/{i:06d}.jpg" for i in range(len(ids))]
    pq.write_table(pa.table({"id": ids, "path": paths}), out / "pool.parquet")
    return out / "pool.parquet", np.array(family), np.array(kind)


def pair_scores(labels: np.ndarray, family: np.ndarray, kind: np.ndarray) -> dict:
    """Pair precision/recall over predicted components, counting pairs that hold an edited
    copy (distractor-distractor pairs have no ground truth)."""
    copy = kind != "original"
    copy &= kind != "other"
    true_pairs = predicted = correct = 0
    for fam in np.unique(family[family >= 0]):
        size = int((family == fam).sum())
        true_pairs += size * (size - 1) // 2
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                if not (copy[a] or copy[b]):
                    continue
                predicted += 1
                correct += int(family[a] >= 0 and family[a] == family[b])
    precision = correct / predicted if predicted else 1.0
    recall = correct / true_pairs if true_pairs else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_transform = {}
    for t in TRANSFORMS:
        rows = np.flatnonzero(kind == t)
        originals = {f: r for r, f in enumerate(family) if kind[r] == "original"}
        per_transform[t] = round(
            float(np.mean([labels[r] == labels[originals[family[r]]] for r in rows])), 3
        )
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "recall_per_transform": per_transform}  # fmt: skip


def _labels(n: int, *pair_sets) -> np.ndarray:
    uf = UnionFind(n)
    for a, b in pair_sets:
        uf.union(a, b)
    return uf.labels()


def quality(args, workdir: Path) -> dict:
    images = real_photos(MAX_SIDE)
    manifest, family, kind = build_pool(images, args.bases, workdir / "pool", args.seed)
    n = len(family)
    config = DedupConfig()

    started = time.perf_counter()
    hashes = hash_pool([manifest], workdir / "dedup", config, progress=False).read()
    hash_s = time.perf_counter() - started
    started = time.perf_counter()
    embed_manifests([manifest], load_embedder("efficientnet_lite0"), workdir / "emb",
                    EmbedConfig(num_workers=2), progress=False)  # fmt: skip
    embed_s = time.perf_counter() - started
    store = EmbeddingStore(workdir / "emb")

    phash = hamming_pairs(int64_codes(hashes.column("phash").to_numpy()), config.phash_radius)
    thumbs = hashes.column("thumb").to_pylist()
    pca = hamming_pairs(PCAHash(config.pca_bits).fit(thumbs).codes(thumbs), config.pca_radius)
    copy = copy_settings(config.copy, store, [])
    rows, raw = aligned_vectors(hashes.column("id").to_pylist(), store)
    vectors = DescriptorSpace(copy.normalize, copy.whiten_dim).fit(raw).apply(raw)
    sweep = {}
    for threshold in sorted({0.5, 0.6, 0.7, 0.8, copy.threshold}):
        edges = [
            (rows[a], rows[b]) for a, b, _ in knn_edges(vectors, replace(copy, threshold=threshold))
        ]
        descriptor = (np.concatenate([e[0] for e in edges]), np.concatenate([e[1] for e in edges]))
        sweep[threshold] = pair_scores(_labels(n, descriptor), family, kind)
    reader = image_reader([manifest], hashes.column("id").to_pylist())
    started = time.perf_counter()
    table, stats = deduplicate(hashes, store, [], config, reader)  # the stage: all methods
    stage_s = time.perf_counter() - started
    unverified = replace(config, copy=replace(config.copy, verify=False))
    plain, _ = deduplicate(hashes, store, [], unverified, reader)
    methods = {"phash": _labels(n, phash), "pca_hash": _labels(n, pca)}
    scores = {m: pair_scores(labels, family, kind) for m, labels in methods.items()}
    scores["descriptor"] = sweep[copy.threshold]
    scores["combined_without_verification"] = pair_scores(
        plain.column("copy_component").to_numpy(), family, kind
    )
    scores["combined"] = pair_scores(table.column("copy_component").to_numpy(), family, kind)
    return {
        "seed": args.seed, "images": n, "bases": int((kind == "original").sum()),
        "distractors": int((kind == "other").sum()), "copies_per_base": len(TRANSFORMS),
        "settings": {"phash_radius": config.phash_radius, "pca_radius": config.pca_radius,
                     "descriptor": "efficientnet_lite0",
                     **{k: getattr(copy, k) for k in REPORTED_COPY_SETTINGS}},
        "methods": scores,
        "descriptor_threshold_sweep": {
            t: {k: v for k, v in sc.items() if k != "recall_per_transform"}
            for t, sc in sweep.items()
        },
        "verification": stats["verification"], "dedup_stage_s": round(stage_s, 1),
        "hash_images_per_s": round(n / hash_s, 1), "embed_images_per_s": round(n / embed_s, 1),
    }  # fmt: skip


def synthetic_descriptors(n: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    """Unit vectors where one in ten has three near copies (cosine about 0.8)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    originals = np.arange(0, n - 3, 10)
    for offset in (1, 2, 3):
        noise = rng.standard_normal((len(originals), dim), dtype=np.float32)
        x[originals + offset] = x[originals] + 0.7 * noise
    return DescriptorSpace("none").apply(x)


def graph_timing(n: int) -> dict:
    vectors = synthetic_descriptors(n)
    config = CopyGraphConfig().resolved(None)  # the paper's 0.6 on raw cosine
    started = time.perf_counter()
    uf = UnionFind(n)
    edges = 0
    for a, b, _ in knn_edges(vectors, config):
        uf.union(a, b)
        edges += len(a)
    labels = uf.labels()
    seconds = time.perf_counter() - started
    index = "flat" if n <= config.exact_max else f"ivf{int(4 * n**0.5)},nprobe{config.nprobe}"
    expected_components = n - 3 * len(range(0, n - 3, 10))
    return {"descriptors": n, "dim": vectors.shape[1], "k": config.k, "index": index,
            "edges": edges, "components": int(len(np.unique(labels))),
            "expected_components": expected_components,
            "graph_and_components_s": round(seconds, 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bases", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="which images are bases, and the edits")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-bench-dedup"))
    p.add_argument("--graph-sizes", default="1e5,1e6", help="comma-separated; empty: none")
    args = p.parse_args()
    ensure_packages()
    shutil.rmtree(args.workdir, ignore_errors=True)  # fresh timings, never a resume
    report = {"quality": quality(args, args.workdir)}
    sizes = [int(float(s)) for s in args.graph_sizes.split(",") if s]
    report["graph"] = [graph_timing(n) for n in sizes]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
