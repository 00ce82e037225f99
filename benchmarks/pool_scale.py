"""Dedup and retrieval at pool scale: the sharded kNN graph, union-find, k-means and seed
retrieval on synthetic pools of 1e5, 1e6 and 1e7 descriptors. Prints JSON.

The pool is written shard by shard as an embedding directory (float16, ``--dim``
dimensions, low so that 1e7 fits this machine's disk): descriptors of 1000 topics (two of
a topic at cosine ~0.4), and one in ten in a copy group of three (cosine > 0.99) whose
members lie a third of the pool apart, so that copies cross shards and index parts. Per
pool size and engine: seconds per stage (fit, search, merge, union-find, k-means fit and
assignment, seed retrieval) and per million vectors; peak RSS of the driver and of the
largest task (local engine: every task in a fresh process, its own peak); edge recall
against exact search on a sample of queries; copy components found vs planted; k-means
purity against the topics.

    python -m benchmarks.pool_scale [--sizes 1e5,1e6,1e7] [--engines local,ray]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from manifests.config import describe, parse_with_quick

TOPICS = 1000
GROUP = 3  # vectors per planted copy group
THRESHOLD = 0.9  # cosine of a copy edge here (synthetic: copies > 0.99, topics ~0.4)


def _measured(fn, task: tuple) -> tuple[float, int]:
    """``fn(*task)`` in this (fresh) process: its seconds and this process's peak RSS."""
    started = time.perf_counter()
    fn(*task)
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class MeasuringRunner:
    """A local ShardRunner that runs every task in a fresh process (one task per process)
    and records, per task set, the wall seconds and the largest task's peak RSS."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["curation.sharded_search", "curation.retrieval"])
        self.ctx = ctx

    def __call__(self, work, progress: bool = True) -> None:
        if not work.tasks:
            return
        processes = min(work.processes or os.cpu_count() or 1, len(work.tasks))
        started = time.perf_counter()
        with ProcessPoolExecutor(processes, mp_context=self.ctx, max_tasks_per_child=1) as pool:
            results = list(pool.map(_measured, [work.fn] * len(work.tasks), work.tasks))
        self.record(work.desc, time.perf_counter() - started, max(r[1] for r in results))

    def record(self, desc: str, seconds: float, rss_kb: int = 0) -> None:
        entry = self.stages.setdefault(desc, {"seconds": 0.0, "peak_task_rss_mb": 0.0})
        entry["seconds"] += seconds
        entry["peak_task_rss_mb"] = max(entry["peak_task_rss_mb"], rss_kb / 1024)


class TimingRunner:
    """Another engine's runner, timed per task set."""

    def __init__(self, runner) -> None:
        self.runner, self.stages = runner, {}

    def __call__(self, work, progress: bool = True) -> None:
        started = time.perf_counter()
        self.runner(work, False)
        entry = self.stages.setdefault(work.desc, {"seconds": 0.0})
        entry["seconds"] += time.perf_counter() - started


def write_pool(root: Path, n: int, dim: int, shard: int, seed: int = 0) -> dict[str, Any]:
    """The synthetic pool (see the module docstring), written shard by shard, with its
    planted structure: ``truth.json`` (copy groups) and ``topics.npy`` (topic of each)."""
    from manifests.embeddings import EmbeddingStore  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((TOPICS, dim)).astype(np.float32)
    topic = rng.integers(0, TOPICS, n)
    third = n // GROUP
    groups = third // 10  # group g: g, g + third, g + 2 third
    originals = (0.25 * centres[topic[:groups]]
                 + 0.3 * rng.standard_normal((groups, dim))).astype(np.float32)  # fmt: skip
    for member in range(1, GROUP):
        topic[member * third : member * third + groups] = topic[:groups]
    store = EmbeddingStore(root)
    store.claim({"model": "synthetic", "dim": dim})
    for index, start in enumerate(range(0, n, shard)):
        p = np.arange(start, min(start + shard, n))
        local = np.random.default_rng([seed, index])
        x = 0.25 * centres[topic[p]] + 0.3 * local.standard_normal((len(p), dim))
        g = p % third
        copy = (g < groups) & (p < GROUP * third)
        x[copy] = originals[g[copy]] + 0.003 * local.standard_normal((int(copy.sum()), dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.write(index, [f"v{i}" for i in p], np.ones(len(p), bool), x.astype(np.float32))
    np.save(root / "topics.npy", topic)
    truth = {"groups": groups, "expected_components": n - (GROUP - 1) * groups}
    return truth


def exact_edges(pool, queries: np.ndarray, k: int) -> set:
    """(query, neighbour) among each sampled query's exact k nearest others above the
    threshold, by a flat scan of every shard."""
    import faiss  # noqa: PLC0415

    q = pool.gather(queries)
    best_s = np.full((len(q), k + 1), -np.inf, np.float32)
    best_i = np.zeros((len(q), k + 1), np.int64)
    for position in range(len(pool.shards)):
        flat = faiss.IndexFlatIP(q.shape[1])
        flat.add(pool.read(position))
        sims, found = flat.search(q, k + 1)
        s = np.concatenate([best_s, sims], 1)
        i = np.concatenate([best_i, pool.ids(position)[found]], 1)
        top = np.argsort(-s, axis=1, kind="stable")[:, : k + 1]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    keep = (best_s > THRESHOLD) & (best_i != queries[:, None])
    rows = np.broadcast_to(queries[:, None], best_i.shape)
    return set(zip(rows[keep].tolist(), best_i[keep].tolist(), strict=True))


def run_size(n: int, engine: str, args, workdir: Path) -> dict[str, Any]:
    from curation.dedup.union_find import UnionFind  # noqa: PLC0415
    from curation.index import IndexSettings, KMeansConfig, SearchConfig  # noqa: PLC0415
    from curation.retrieval import cluster_pool, sample_nearest  # noqa: PLC0415
    from curation.sharded_search import SearchPlan, run_search  # noqa: PLC0415
    from curation.vector_shards import VectorShards  # noqa: PLC0415

    root = workdir / f"pool-{n:.0e}"
    truth = json.loads((root / "truth.json").read_text())
    work = workdir / f"work-{engine}-{n:.0e}"
    shutil.rmtree(work, ignore_errors=True)
    runner, close = make_runner(engine)
    try:
        pool, _ = VectorShards.select(str(root))
        settings = IndexSettings(exact_max=args.exact_max, list_size=args.list_size,
                                 nprobe=args.nprobe, part_vectors=args.part_vectors,
                                 use_gpu=False)  # fmt: skip
        plan = SearchPlan(pool, pool, args.k + 1, settings, THRESHOLD, exclude_self=True)
        neighbours = run_search(plan, work / "knn", runner, progress=False, desc="knn")
        started = time.perf_counter()
        uf, edges = UnionFind(len(pool)), 0
        for _, table in neighbours.iter_shards(["query", "base"]):
            uf.union(table.column("query").to_numpy(), table.column("base").to_numpy())
            edges += table.num_rows
        components = int(len(np.unique(uf.labels())))
        runner.stages["knn: union-find"] = {"seconds": time.perf_counter() - started}
        del uf

        kmeans = KMeansConfig(k=args.kmeans_k, niter=10, use_gpu=False)
        clusters = cluster_pool(pool, kmeans, work / "kmeans", runner, progress=False)
        purity = _purity(clusters.assignment, np.load(root / "topics.npy"))

        seeds_root = workdir / f"seeds-{n:.0e}"
        shutil.rmtree(seeds_root, ignore_errors=True)
        _write_seeds(seeds_root, pool, args.seeds)
        seeds, seed_ids = VectorShards.select(str(seeds_root))
        search = SearchConfig(exact_max=args.exact_max, list_size=args.list_size,
                              part_vectors=args.part_vectors, use_gpu=False)  # fmt: skip
        sample_nearest(pool, seeds, seed_ids, 4, search, work / "retrieve", runner, False)
        driver_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        close()
    sample = np.sort(np.random.default_rng(1).choice(n, args.recall_sample, replace=False))
    exact = exact_edges(pool, sample, args.k)
    chosen = np.zeros(n, bool)
    chosen[sample] = True
    found = set()
    for _, table in neighbours.iter_shards(["query", "base"]):
        q, b = table.column("query").to_numpy(), table.column("base").to_numpy()
        found |= set(zip(q[chosen[q]].tolist(), b[chosen[q]].tolist(), strict=True))
    stages = {k: {m: round(v, 1) for m, v in s.items()} for k, s in runner.stages.items()}
    total = sum(s["seconds"] for s in runner.stages.values())
    return {
        "vectors": n, "engine": engine, "dim": args.dim, "shards": len(pool.shards),
        "index": settings.factory_for(n, 0), "parts": len(plan.parts()),
        "generate_s": truth["seconds"],
        "stages": stages, "total_s": round(total, 1),
        "s_per_1e6_vectors": round(total * 1e6 / n, 1),
        "peak_driver_rss_mb": round(driver_rss_mb),
        "peak_task_rss_mb": max((s.get("peak_task_rss_mb", 0) for s in stages.values()),
                                default=0) or None,  # fmt: skip
        "edges": edges, "edge_recall": round(len(found & exact) / max(1, len(exact)), 5),
        "sampled_exact_edges": len(exact),
        "components": components, "expected_components": truth["expected_components"],
        "kmeans": {"k": args.kmeans_k, "purity": round(purity, 4)},
    }  # fmt: skip


def _purity(assignment: np.ndarray, topic: np.ndarray) -> float:
    """Share of vectors whose cluster's most common topic is their own."""
    pairs = assignment.astype(np.int64) * TOPICS + topic
    counts = np.bincount(pairs)
    per_cluster = counts.reshape(-1, TOPICS) if len(counts) % TOPICS == 0 else \
        np.pad(counts, (0, -len(counts) % TOPICS)).reshape(-1, TOPICS)  # fmt: skip
    return float(per_cluster.max(axis=1).sum() / len(topic))


def _write_seeds(root: Path, pool, count: int) -> None:
    from manifests.embeddings import EmbeddingStore  # noqa: PLC0415

    rng = np.random.default_rng(2)
    x = pool.gather(np.sort(rng.choice(len(pool), count, replace=False)))
    x += 0.01 * rng.standard_normal(x.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = EmbeddingStore(root)
    store.claim({"model": "synthetic"})
    store.write(0, [f"s{i}" for i in range(count)], np.ones(count, bool), x)


def make_runner(engine: str):
    if engine == "local":
        return MeasuringRunner(), lambda: None
    from pipelines.engines.ray_engine import RayEngine  # noqa: PLC0415

    ray = RayEngine(num_cpus=os.cpu_count())
    return TimingRunner(ray.run_tasks), ray.close


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--sizes", default="1e5,1e6,1e7")
    p.add_argument("--engines", default="local,ray")
    p.add_argument("--ray-max", type=float, default=1e6, help="largest size run on Ray")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--shard", type=int, default=100_000, help="vectors per embedding shard")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--exact-max", type=int, default=200_000)
    p.add_argument("--list-size", type=int, default=1024)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--part-vectors", type=int, default=2_000_000)
    p.add_argument("--kmeans-k", type=int, default=TOPICS)
    p.add_argument("--seeds", type=int, default=10_000)
    p.add_argument("--recall-sample", type=int, default=2000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-pool-scale"))
    p.add_argument("--one", nargs=2, metavar=("SIZE", "ENGINE"), help=argparse.SUPPRESS)
    args = parse_with_quick(p, {"sizes": "2e4", "engines": "local", "shard": 5000,
                                "kmeans_k": 50, "seeds": 200, "recall_sample": 200})  # fmt: skip
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.one:  # one size on one engine, in a process of its own (its RSS is the driver's)
        print(json.dumps(run_size(int(float(args.one[0])), args.one[1], args, args.workdir)))
        return
    results = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        root = args.workdir / f"pool-{size:.0e}"
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        truth = write_pool(root, size, args.dim, args.shard)
        truth["seconds"] = round(time.perf_counter() - started, 1)
        (root / "truth.json").write_text(json.dumps(truth))
        for engine in args.engines.split(","):
            if engine == "ray" and size > args.ray_max:
                continue
            command = [sys.executable, "-m", "benchmarks.pool_scale", *sys.argv[1:],
                       "--one", str(size), engine]  # fmt: skip
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
