"""faiss k-means and nearest-neighbour search on L2-normalized vectors (cosine), on all GPUs
faiss sees, else on the CPU.

Search is exact (flat inner product) up to ``exact_max`` base vectors; beyond, an index
from a faiss factory string, IVF-PQ by default, refined by exact distances of the
shortlist so that PQ's approximation costs speed, not ranking.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np

from manifests.config import bounded

log = logging.getLogger(__name__)


def gpu_count(use_gpu: bool = True) -> int:
    """GPUs faiss can use (0 with faiss-cpu, or when ``use_gpu`` is off)."""
    return faiss.get_num_gpus() if use_gpu and hasattr(faiss, "get_num_gpus") else 0


@dataclass
class KMeansConfig:
    k: int = bounded(100_000, at_least=1)  # the paper's pool clustering
    niter: int = bounded(20, at_least=1)
    nredo: int = bounded(1, at_least=1)  # runs from other random starts; the best objective wins
    seed: int = 0
    spherical: bool = True  # centroids renormalized: clusters by cosine
    # faiss trains on at most k x this many points and drops the rest without a word;
    # None trains on every point, a number subsamples and says so in the log
    max_points_per_centroid: int | None = None
    use_gpu: bool = True


def kmeans(vectors: np.ndarray, config: KMeansConfig) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, d), the centroid of each vector (n,)); k is capped at n."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    k = min(config.k, n)
    per_centroid = config.max_points_per_centroid or math.ceil(n / k)
    if n > k * per_centroid:
        log.info("k-means trains on %d of %d points (max_points_per_centroid=%d)",
                 k * per_centroid, n, per_centroid)  # fmt: skip
    gpus = gpu_count(config.use_gpu)
    km = faiss.Kmeans(d, k, niter=config.niter, nredo=config.nredo, seed=config.seed,
                      spherical=config.spherical, max_points_per_centroid=per_centroid,
                      min_points_per_centroid=1, gpu=gpus > 0, verbose=False)  # fmt: skip
    log.info("k-means: %d points, k=%d, %s", n, k, f"{gpus} GPU(s)" if gpus else "CPU")
    km.train(x)
    _, assignment = km.index.search(x, 1)
    return km.centroids, assignment[:, 0]


@dataclass
class SearchConfig:
    exact_max: int = bounded(100_000, at_least=0)  # searched exactly; more use `factory`
    factory: str | None = None  # faiss index_factory string; None: default_factory(n, d)
    nprobe: int = bounded(32, at_least=1)
    # shortlist of k x this re-ranked exactly (factories with RFlat)
    refine_factor: int = bounded(16, at_least=1)
    train_sample: int | None = None  # None: 64 x nlist, at most the base
    batch: int = bounded(16_384, at_least=1)  # queries per call
    use_gpu: bool = True


@dataclass(frozen=True)
class IndexSettings:
    """How each part's index is built and searched (see :mod:`curation.index`)."""

    exact_max: int = 200_000  # bases up to this many vectors are searched exactly
    list_size: int = 1024  # beyond: IVF with this many vectors per list on average ...
    codes: str = "Flat"  # ... storing these codes (a faiss factory suffix, e.g. PQ64x8,RFlat)
    factory: str | None = None  # a faiss factory string that overrides the three above
    nprobe: int = 16
    refine_factor: int = 16
    train_per_list: int = 64  # training sample: this many vectors per IVF list
    part_vectors: int = 2_000_000  # base vectors one search task holds
    batch: int = 16_384  # queries per faiss call
    use_gpu: bool = True

    def factory_for(self, n: int, gpus: int) -> str:
        """The faiss factory of a base of ``n`` vectors on a machine with ``gpus`` GPUs:
        an HNSW coarse quantizer on a CPU (its cost grows with log(lists), not lists),
        a flat one on GPUs (faiss has no GPU HNSW)."""
        if self.factory:
            return self.factory
        if n <= self.exact_max:
            return "Flat"
        lists = max(1, round(n / self.list_size))
        return f"IVF{lists}{'' if gpus else '_HNSW32'},{self.codes}"


def default_factory(n: int, d: int) -> str:
    """IVF with about 4 sqrt(n) lists, PQ codes of d/4 bytes, exact re-ranking."""
    nlist = max(1, int(4 * math.sqrt(n)))
    m = max(1, d // 4)
    while d % m:
        m -= 1
    return f"IVF{nlist},PQ{m}x8,RFlat"


def empty_index(d: int, factory: str) -> faiss.Index:
    """An untrained inner-product index from a faiss factory string."""
    return faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)


def train_index(index: faiss.Index, sample: np.ndarray) -> None:
    """Train ``index`` (its IVF quantizer, PQ codebooks) on ``sample``, if it needs it."""
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))


def ready_for_search(
    index: faiss.Index, nprobe: int, refine_factor: int, use_gpu: bool
) -> faiss.Index:
    """``index`` with its search settings, on all GPUs faiss sees where faiss can put it
    (not a refined index; a quantizer other than flat stays on the CPU). Add vectors
    after this: adding on a GPU is the fast way."""
    if _is_ivf(index):
        faiss.extract_index_ivf(index).nprobe = nprobe
    if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
        faiss.downcast_index(index).k_factor = refine_factor
    if _gpu_clonable(index) and gpu_count(use_gpu):
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def _gpu_clonable(index: faiss.Index) -> bool:
    if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
        return False  # faiss has no GPU refine wrapper
    if _is_ivf(index):
        return isinstance(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer),
                          faiss.IndexFlat)  # fmt: skip
    return True


def build_search_index(base: np.ndarray, config: SearchConfig) -> faiss.Index:
    """An inner-product index holding ``base`` (see the module docstring)."""
    x = np.ascontiguousarray(base, dtype=np.float32)
    n, d = x.shape
    factory = "Flat" if n <= config.exact_max else (config.factory or default_factory(n, d))
    index = empty_index(d, factory)
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist
        sample = min(n, config.train_sample or 64 * nlist)
        chosen = np.sort(np.random.default_rng(0).choice(n, size=sample, replace=False))
        train_index(index, x[chosen])
    on_gpu = _gpu_clonable(index) and gpu_count(config.use_gpu) > 0
    index = ready_for_search(index, config.nprobe, config.refine_factor, config.use_gpu)
    index.add(x)
    log.info("search index %s over %d vectors on %s", factory, n, "GPU" if on_gpu else "CPU")
    return index


def search(
    index: faiss.Index, queries: np.ndarray, k: int, batch: int = 16_384
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, base rows), each (n_queries, k); rows are -1 where fewer exist."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    sims, rows = [], []
    for start in range(0, len(q), batch):
        s, r = index.search(q[start : start + batch], k)
        sims.append(s)
        rows.append(r)
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(sims), np.concatenate(rows)
