"""Retrieval index speed and recall on clustered synthetic vectors. Prints JSON.

k-means time; IVF-PQ (with exact re-ranking) build and search time for the queries;
exact flat search time on a subset of the queries (exact search of all of them takes
too long on 2 cores; its per-query time is what the speed-up divides); recall@4 of
IVF-PQ against exact search on that subset, in the same run. Also the forward
throughput of a ViT-S/14 at 224 px on this CPU (random weights: speed only).

    python benchmarks/retrieval.py [--n 1000000] [--queries 100000] [--exact-queries 5000]
        [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from curation.index import (
    KMeansConfig,
    SearchConfig,
    build_search_index,
    gpu_count,
    kmeans,
    search,
)
from manifests.config import describe, parse_with_quick
from training.models import build_vit


def clustered(n: int, dim: int, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``n_clusters`` random centres (cosine to the centre ~0.7)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # bounded temporaries
        labels = rng.integers(0, n_clusters, min(100_000, n - start))
        noise = rng.standard_normal((len(labels), dim), dtype=np.float32) / np.sqrt(dim)
        x[start : start + len(labels)] = centres[labels] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def vit_throughput(batch: int = 32, batches: int = 3) -> float:
    model = build_vit("vit_small", 14, img_size=224).eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        model(x[:2])  # warm-up
        _, seconds = timed(lambda: [model(x) for _ in range(batches)])
    return batch * batches / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=100_000)
    p.add_argument("--exact-queries", type=int, default=5_000)
    p.add_argument("--kmeans-k", type=int, default=1024)
    p.add_argument("--vit-batches", type=int, default=3, help="batches of 32 the ViT times")
    # quick: 32-d, as faiss trains 8-bit PQ codebooks slowly (PQ64x8 on 16k vectors: ~55 s)
    args = parse_with_quick(p, {"n": 20_000, "dim": 32, "queries": 2_000, "exact_queries": 500,
                                "kmeans_k": 64, "vit_batches": 1})  # fmt: skip

    base = clustered(args.n, args.dim, n_clusters=10_000)
    queries = clustered(args.queries, args.dim, n_clusters=10_000, seed=0)
    queries = queries[np.random.default_rng(1).permutation(len(queries))]

    _, kmeans_s = timed(lambda: kmeans(base, KMeansConfig(k=args.kmeans_k, niter=20)))
    config = SearchConfig(exact_max=0)
    index, build_s = timed(lambda: build_search_index(base, config))
    (_, approx), search_s = timed(lambda: search(index, queries, 4, config.batch))

    subset = queries[: args.exact_queries]
    flat = build_search_index(base, SearchConfig(exact_max=args.n))
    (_, exact), exact_s = timed(lambda: search(flat, subset, 4))
    recall = np.mean([len(set(a) & set(e)) / 4
                      for a, e in zip(approx[: len(subset)], exact, strict=True)])  # fmt: skip
    per_query = {
        "ivfpq_ms": 1000 * search_s / len(queries),
        "exact_ms": 1000 * exact_s / len(subset),
    }
    print(json.dumps({
        "vectors": args.n, "dim": args.dim, "queries": args.queries,
        "kmeans": {"k": args.kmeans_k, "niter": 20, "seconds": round(kmeans_s, 1)},
        "ivfpq": {"factory": config.index(args.dim).factory_for(args.n, gpu_count()),
                  "nprobe": config.nprobe,
                  "refine_factor": config.refine_factor, "build_s": round(build_s, 1),
                  "search_s": round(search_s, 1), "ms_per_query": round(per_query["ivfpq_ms"], 3)},
        "exact": {"queries": len(subset), "search_s": round(exact_s, 1),
                  "ms_per_query": round(per_query["exact_ms"], 3)},
        "recall_at_4": round(float(recall), 4),
        "speedup_vs_exact": round(per_query["exact_ms"] / per_query["ivfpq_ms"], 1),
        "vit_s14_224_images_per_s": round(vit_throughput(batches=args.vit_batches), 1),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
