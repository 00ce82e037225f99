"""Copy-detection graphs on L2-normalized descriptors with faiss: k nearest neighbours,
edges above a cosine threshold, delivered chunk by chunk for a streaming union-find."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)


@dataclass
class CopyGraphConfig:
    k: int = 64
    threshold: float = 0.6  # cosine; the paper's self-dedup edge
    relative_threshold: float = 0.45  # cosine to an evaluation image
    center: bool = True  # subtract the pool mean, then re-normalize (see prepare)
    exact_max: int = 200_000  # larger pools use an IVF index
    nprobe: int = 16
    chunk: int = 20_000  # queries per search call: the edge stream's granularity
    use_gpu: bool = True  # when faiss sees a GPU


def prepare(vectors: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Subtract ``mean`` (if given) and L2-normalize, in float32.

    Centring matters for descriptors that are not zero-mean (pooled CNN features are all
    positive, so unrelated images have cosine 0.5 or more); it barely changes SSCD's.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if mean is not None:
        x = x - mean
    x = np.ascontiguousarray(x)
    faiss.normalize_L2(x)
    return x


def build_index(base: np.ndarray, config: CopyGraphConfig) -> faiss.Index:
    """Exact inner-product search up to ``exact_max`` vectors, IVF-Flat beyond; on all GPUs
    when faiss was built with them and sees one."""
    n, d = base.shape
    if n <= config.exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(base[np.sort(sample)])
        index.nprobe = config.nprobe
    if config.use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
        log.info("copy graph on %d GPU(s)", faiss.get_num_gpus())
    index.add(base)
    return index


def knn_edges(
    vectors: np.ndarray, config: CopyGraphConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Chunks of edges (i, j, cosine), i != j, between each vector and its k nearest
    neighbours with cosine above ``config.threshold``."""
    index = build_index(vectors, config)
    k = min(config.k + 1, len(vectors))  # +1: a vector finds itself
    yield from _edges(index, vectors, k, config.threshold, config.chunk, self_search=True)


def cross_edges(
    queries: np.ndarray, base: np.ndarray, k: int, threshold: float, config: CopyGraphConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Chunks of edges (query row, base row, cosine) above ``threshold``."""
    index = build_index(base, config)
    yield from _edges(index, queries, min(k, len(base)), threshold, config.chunk, self_search=False)


def _edges(
    index: faiss.Index, queries: np.ndarray, k: int, threshold: float, chunk: int, self_search: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    for start in range(0, len(queries), chunk):
        sims, found = index.search(queries[start : start + chunk], k)
        rows = np.arange(start, start + len(sims))[:, None].repeat(k, axis=1)
        keep = (sims > threshold) & (found >= 0)
        if self_search:
            keep &= found != rows
        yield rows[keep], found[keep], sims[keep]
