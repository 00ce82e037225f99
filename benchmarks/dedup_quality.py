"""Copy-detection quality of the dedup, through ``build_lvd`` and through the standalone
commands, and the speed and recall of its kNN graph. Prints JSON.

Held-out pools (no setting was tuned on a seed's pool before it was scored): real images
shipped by Debian packages (opencv-doc examples, mate-backgrounds, tuxpaint-stamps-default;
installed when missing, as root) and scikit-image's, each unique by content; the Tux Paint
stamps, small objects, are pasted onto random gradient backgrounds (the hard case for a
perceptual hash: it sees the background). ``--bases`` of them get ``--copies`` edited copies
each, by distinct transforms of :mod:`pipelines.demo.near_duplicates`; ``--singles`` more
are distractors. The pool is served on loopback and built by ``build_lvd`` (crawl, hash,
embed_pool, dedup of ``configs/curation/local.yaml``); the same crawled images then go
through ``pipelines.embed`` + ``pipelines.dedup``. Each route is scored by pairwise precision
and recall over its components, every pair counted (distractors merged with each other are
false pairs too), and recall per edit; the routes' agreement is the pairs they decide
differently. Then the kNN graph on 1e5 and 1e6 synthetic 512-d descriptors: edge recall
against exact search on a sample of queries, components found vs expected, and time.

    python benchmarks/dedup_quality.py [--seed 0] [--workdir DIR] [--graph-sizes 1e5,1e6]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
import zlib
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

from curation.dedup.copy_graph import CopyGraphConfig, DescriptorSpace, build_index, knn_edges
from curation.dedup.stage import hash_and_dedup
from curation.dedup.union_find import UnionFind
from curation.embed import embed_manifests, load_embedder
from manifests.config import load_config
from manifests.parquet_io import read_manifest
from manifests.schemas import DEDUP, POOL
from pipelines.build import run_build
from pipelines.build_layout import BuildLayout
from pipelines.curation_config import CurationConfig
from pipelines.demo.loopback_web import serve_in_process
from pipelines.demo.near_duplicates import TRANSFORMS, edited_copy
from pipelines.demo.photos import ensure_packages, real_photos
from pipelines.engines import make_engine

MAX_SIDE = 384  # images are stored at most this large, as a crawl with max_side would
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "curation" / "local.yaml"
BUILD_STAGES = ["crawl", "hash", "embed_pool", "dedup"]


def on_gradient(name: str, rgba: Image.Image, seed: int) -> Image.Image:
    """An opaque image as it is; a cut-out object (a stamp) at 35-60% of a random
    gradient canvas, somewhere on it."""
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    w, h = int(rng.integers(300, MAX_SIDE + 1)), int(rng.integers(240, 300))
    ends = rng.integers(0, 256, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    canvas = Image.fromarray((ends[0] + t[..., None] * (ends[1] - ends[0])).astype(np.uint8))
    side = int(min(w, h) * rng.uniform(0.35, 0.6))
    thing = rgba.copy()
    thing.thumbnail((side, side))
    x = int(rng.integers(0, w - thing.width + 1))
    y = int(rng.integers(0, h - thing.height + 1))
    canvas.paste(thing, (x, y), thing)
    return canvas


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def held_out_pool(args, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write the pool's JPEGs to ``out`` as NNNNNN.jpg; family (base index, or -1 for a
    distractor) and kind ("original", a transform, or "single") per file number."""
    images = real_photos(MAX_SIDE, compose=lambda n, im: on_gradient(n, im, args.seed))
    rng = np.random.default_rng(args.seed)
    ordered = sorted(images)
    names = [ordered[i] for i in rng.permutation(len(ordered))]
    if len(names) < args.bases + args.singles:
        raise SystemExit(f"{len(names)} distinct images; --bases + --singles need more")
    out.mkdir(parents=True, exist_ok=True)
    family, kind = [], []

    def add(image: Image.Image, fam: int, k: str) -> None:
        (out / f"{len(family):06d}.jpg").write_bytes(_jpeg(image))
        family.append(fam)
        kind.append(k)

    for i, name in enumerate(names[: args.bases]):
        add(images[name], i, "original")
        for t in rng.choice(sorted(TRANSFORMS), args.copies, replace=False):
            add(edited_copy(images[name], str(t), seed=args.seed * 100_000 + i), i, str(t))
    for name in names[args.bases : args.bases + args.singles]:
        add(images[name], -1, "single")
    return np.array(family), np.array(kind)


def _pairs(*labels: np.ndarray) -> int:
    """Pairs of rows that agree on every one of ``labels``."""
    _, counts = np.unique(np.stack(labels, 1), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def pair_scores(labels: np.ndarray, family: np.ndarray, kind: np.ndarray) -> dict:
    """Pairwise precision/recall of the components ``labels`` against the families; every
    pair counts, a distractor being a family of its own."""
    truth = np.where(family >= 0, family, -1 - np.arange(len(family)))
    predicted, true, correct = _pairs(labels), _pairs(truth), _pairs(labels, truth)
    precision = correct / predicted if predicted else 1.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    original = {f: r for r, f in enumerate(family) if kind[r] == "original"}
    per_edit = {}
    for t in sorted(set(kind) - {"original", "single"}):
        rows = np.flatnonzero(kind == t)
        joined = [labels[r] == labels[original[family[r]]] for r in rows]
        per_edit[t] = {"copies": len(rows), "recall": round(float(np.mean(joined)), 3)}
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "pairs": {"predicted": predicted, "true": true, "correct": correct},
            "recall_per_edit": per_edit}  # fmt: skip


def _file_numbers(pool_manifest: Path) -> dict[str, int]:
    pool = read_manifest([pool_manifest], POOL, ["id", "url", "status"]).to_pylist()
    return {r["id"]: int(r["url"].rsplit("/", 1)[1].split(".")[0]) for r in pool
            if r["status"] == "ok"}  # fmt: skip


def _components(dedup_dir: Path, number: dict[str, int], n: int) -> np.ndarray:
    """Copy component per file number, labelled by file numbers (not crawl ids)."""
    table = read_manifest([dedup_dir], DEDUP, ["id", "copy_component"]).to_pylist()
    ids = [r["id"] for r in table]
    labels = np.full(n, -1, np.int64)
    for r in table:  # labels are row numbers of the dedup manifest: map them to files
        labels[number[r["id"]]] = number[ids[r["copy_component"]]]
    if (labels < 0).any():
        raise SystemExit(f"{int((labels < 0).sum())} images were not crawled")
    return labels


def routes(args, workdir: Path) -> dict:
    family, kind = held_out_pool(args, workdir / "web")
    n = len(family)
    config = load_config(CurationConfig, RECIPE)
    config.seeds.roots = {s.name: str(workdir / "web") for s in config.seed_sets}
    config.crawl.fetch.allow_private_networks = True
    build = BuildLayout(workdir / "build")
    engine = make_engine("local")
    started = time.perf_counter()
    try:
        with serve_in_process(workdir / "web") as port:
            urls = workdir / "urls.txt"
            urls.write_text("".join(f"http://127.0.0.1:{port}/{i:06d}.jpg\n" for i in range(n)))
            config.urls = [str(urls)]
            run_build(build.out, config, engine, BUILD_STAGES, progress=False)
    finally:
        engine.close()
    build_s = time.perf_counter() - started
    number = _file_numbers(build.pool_manifest)
    via_build = _components(build.dedup_manifest, number, n)

    started = time.perf_counter()  # pipelines.embed, then pipelines.dedup --embeddings
    model = config.copy_model or config.model
    embed_manifests([build.pool_manifest], load_embedder(model), workdir / "cli" / "emb",
                    config.embed, progress=False)  # fmt: skip
    hash_and_dedup([build.pool_manifest], workdir / "cli", workdir / "cli" / "emb",
                   config=config.dedup, progress=False)  # fmt: skip
    cli_s = time.perf_counter() - started
    via_cli = _components(workdir / "cli" / "dedup", number, n)
    same = _pairs(via_build, via_cli)
    return {
        "seed": args.seed, "images": n, "bases": args.bases, "copies_per_base": args.copies,
        "singles": args.singles, "model": model,
        "build_lvd": pair_scores(via_build, family, kind) | {"seconds": round(build_s, 1)},
        "cli": pair_scores(via_cli, family, kind) | {"seconds": round(cli_s, 1)},
        "pairs_decided_differently": _pairs(via_build) + _pairs(via_cli) - 2 * same,
        "dedup_stats": json.loads((build.dedup_stats).read_text()),
    }  # fmt: skip


def synthetic_descriptors(n: int, clustered: bool, dim: int = 512, seed: int = 0) -> np.ndarray:
    """Unit vectors where one in ten has three near copies (cosine about 0.8 to it).
    Isotropic: the rest are random directions, the worst case for an IVF index (no
    structure for its cells to follow). Clustered: images come from 1000 topics (two
    images of a topic at cosine about 0.5), as real descriptors do."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    if clustered:
        centres = rng.standard_normal((1000, dim), dtype=np.float32)
        x += centres[rng.integers(0, len(centres), n)]
    originals = np.arange(0, n - 3, 10)
    spread = 1.0 if clustered else 0.7  # cosine 0.82 to the original either way
    for offset in (1, 2, 3):
        noise = rng.standard_normal((len(originals), dim), dtype=np.float32)
        x[originals + offset] = x[originals] + spread * noise
    return DescriptorSpace("none").apply(x)


def exact_edges(vectors: np.ndarray, queries: np.ndarray, config: CopyGraphConfig) -> set:
    """Edges (query, neighbour) above the threshold among each query's exact k nearest."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return _edge_set(queries, *index.search(vectors[queries], config.k + 1), config.threshold)


def _edge_set(queries: np.ndarray, sims: np.ndarray, found: np.ndarray, threshold: float) -> set:
    above = (sims > threshold) & (found != queries[:, None]) & (found >= 0)
    rows = np.broadcast_to(queries[:, None], found.shape)
    return set(zip(rows[above].tolist(), found[above].tolist(), strict=True))


def recall_by_nprobe(vectors: np.ndarray, queries: np.ndarray, exact: set,
                     config: CopyGraphConfig) -> dict:  # fmt: skip
    """Edge recall of the sampled queries and search seconds per 1e6 queries, for a few
    nprobe settings of the graph's IVF index (built once)."""
    index = build_index(vectors, config)
    out = {}
    for nprobe in (8, 16, 32, 64, 128):
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        started = time.perf_counter()
        sims, found = index.search(vectors[queries], config.k + 1)
        seconds = time.perf_counter() - started
        edges = _edge_set(queries, sims, found, config.threshold)
        recall = len(edges & exact) / max(1, len(exact))
        per_million = seconds * 1e6 / len(queries)
        out[nprobe] = {"edge_recall": round(recall, 5),
                       "search_s_per_1e6_queries": round(per_million, 1)}  # fmt: skip
    return out


def graph_timing(n: int, clustered: bool, full: bool, nprobe: int | None,
                 sample: int = 2000) -> dict:  # fmt: skip
    """The copy graph of ``n`` synthetic descriptors: the share of the exact graph's edges
    (on ``sample`` queries) that its index finds at a few nprobe settings, and with
    ``full`` the whole graph's time and components at the dedup's nprobe."""
    vectors = synthetic_descriptors(n, clustered)
    given = {} if nprobe is None else {"nprobe": nprobe}
    config = CopyGraphConfig(**given).resolved(None)  # the paper's 0.6 on raw cosine
    queries = np.random.default_rng(1).choice(n, min(sample, n), replace=False)
    exact = exact_edges(vectors, queries, config)
    report = {"descriptors": n, "data": "clustered" if clustered else "isotropic",
              "dim": vectors.shape[1], "k": config.k, "sampled_exact_edges": len(exact),
              "expected_components": n - 3 * len(range(0, n - 3, 10))}  # fmt: skip
    if n > config.exact_max:
        report["index"] = config.ivf_factory(n)
        report["by_nprobe"] = recall_by_nprobe(vectors, queries, exact, config)
    if not full:
        return report
    is_query = np.zeros(n, bool)
    is_query[queries] = True
    started = time.perf_counter()
    uf = UnionFind(n)
    edges, found = 0, set()
    for a, b, _ in knn_edges(vectors, config):
        uf.union(a, b)
        edges += len(a)
        chosen = is_query[a]
        found |= set(zip(a[chosen].tolist(), b[chosen].tolist(), strict=True))
    labels = uf.labels()
    seconds = time.perf_counter() - started
    return report | {
        "graph": {"nprobe": None if n <= config.exact_max else config.nprobe, "edges": edges,
                  "edge_recall": round(len(found & exact) / max(1, len(exact)), 5),
                  "components": int(len(np.unique(labels))),
                  "graph_and_components_s": round(seconds, 1)}}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="which images are bases, and the edits")
    p.add_argument("--bases", type=int, default=120)
    p.add_argument("--copies", type=int, default=3, help="edited copies per base")
    p.add_argument("--singles", type=int, default=240, help="distractors")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-bench-dedup"))
    p.add_argument("--graph-sizes", default="1e5,1e6", help="comma-separated; empty: none")
    p.add_argument("--nprobe", type=int, default=None, help="IVF cells searched; default: the "
                   "dedup's own")  # fmt: skip
    p.add_argument("--skip-routes", action="store_true", help="only the graph")
    p.add_argument("--graph-data", default="clustered,isotropic", help="synthetic descriptors")
    p.add_argument("--no-full-graph", action="store_true",
                   help="only the edge recall per nprobe, not the whole graph's time")  # fmt: skip
    args = p.parse_args()
    report = {}
    if not args.skip_routes:
        ensure_packages()
        shutil.rmtree(args.workdir, ignore_errors=True)  # fresh timings, never a resume
        report["routes"] = routes(args, args.workdir)
    sizes = [int(float(s)) for s in args.graph_sizes.split(",") if s]
    kinds = args.graph_data.split(",")
    report["graph"] = [graph_timing(n, kind == "clustered", not args.no_full_graph, args.nprobe)
                       for n in sizes for kind in kinds]  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
