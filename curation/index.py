"""faiss k-means and nearest-neighbour search on L2-normalized vectors (cosine), on all GPUs
faiss sees, else on the CPU.

Search is exact (flat inner product) up to ``exact_max`` base vectors; beyond, an IVF
index (:class:`IndexSettings`). A pool's search runs sharded (:mod:`curation.sharded_search`);
:func:`build_search_index` builds one index in one process, for what fits there.
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
    # the paper's pool clustering (DINOv3's first level: 200M)
    k: int = bounded(100_000, at_least=1, at_most=1_000_000_000)
    niter: int = bounded(20, at_least=1)
    nredo: int = bounded(1, at_least=1)  # runs from other random starts; the best objective wins
    seed: int = 0
    spherical: bool = True  # centroids renormalized: clusters by cosine
    # centroids are trained on a sample of k x this many points (faiss's own default; it
    # would drop the rest without a word); null trains on every point, in one process
    max_points_per_centroid: int | None = bounded(256, at_least=1)
    use_gpu: bool = True
    # a pool of n is cut into at most n // this many clusters: k is sized to a small pool
    min_cluster_size: int = bounded(8, at_least=1)

    def clusters_for(self, n: int) -> int:
        """How many clusters a pool of ``n`` is cut into: ``k``, or fewer where the pool
        cannot fill ``k`` clusters of ``min_cluster_size``."""
        return max(1, min(self.k, n // self.min_cluster_size))

    def sample_size(self, n: int) -> int:
        """Points the centroids of a pool of ``n`` are trained on."""
        per_centroid = self.max_points_per_centroid
        return n if per_centroid is None else min(n, min(self.k, n) * per_centroid)


def kmeans_centroids(vectors: np.ndarray, config: KMeansConfig) -> np.ndarray:
    """Centroids (k, d) of ``vectors`` (all of them: sample before); k is capped at n."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    k = min(config.k, n)
    gpus = gpu_count(config.use_gpu)
    km = faiss.Kmeans(d, k, niter=config.niter, nredo=config.nredo, seed=config.seed,
                      spherical=config.spherical, max_points_per_centroid=math.ceil(n / k),
                      min_points_per_centroid=1, gpu=gpus > 0, verbose=False)  # fmt: skip
    log.info("k-means: %d points, k=%d, %s", n, k, f"{gpus} GPU(s)" if gpus else "CPU")
    km.train(x)
    return km.centroids


def assign(
    vectors: np.ndarray, centroids: np.ndarray, spherical: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid, inner product with it) of each vector: by cosine for spherical
    k-means, by L2 distance otherwise, as faiss's k-means assigns."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    index = faiss.IndexFlatIP(c.shape[1]) if spherical else faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    _, nearest = index.search(x, 1)
    nearest = nearest[:, 0]
    return nearest, np.einsum("ij,ij->i", x, c[nearest])


def kmeans(vectors: np.ndarray, config: KMeansConfig) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, d), the centroid of each vector (n,)), trained on every vector, in
    one process; a pool is clustered as shard tasks (curation.retrieval.cluster_pool)."""
    centroids = kmeans_centroids(vectors, config)
    return centroids, assign(vectors, centroids, config.spherical)[0]


@dataclass(frozen=True)
class IndexSettings:
    """How an index (each part of a sharded one) is built and searched."""

    exact_max: int = 200_000  # bases up to this many vectors are searched exactly
    list_size: int = 1024  # beyond: IVF with this many vectors per list on average ...
    codes: str = "Flat"  # ... storing these codes (a faiss factory suffix, e.g. PQ64x8,RFlat)
    factory: str | None = None  # a faiss factory string that overrides the three above
    nprobe: int = 16
    refine_factor: int = 16  # a refined index (RFlat) re-ranks k x this exactly
    train_per_list: int = 64  # training sample: this many vectors per IVF list
    part_vectors: int = 2_000_000  # base vectors one search task holds
    batch: int = 16_384  # queries per faiss call
    use_gpu: bool = True
    quantizer_ef_search: int = 128  # candidates an HNSW coarse quantizer explores

    def factory_for(self, n: int, gpus: int) -> str:
        """The faiss factory of a base of ``n`` vectors on a machine with ``gpus`` GPUs.
        Lists of a constant size keep the scan per query constant as the base grows; the
        coarse quantizer is HNSW on a CPU (its cost grows with log(lists), not lists) and
        flat on GPUs (faiss has no GPU HNSW)."""
        if self.factory:
            return self.factory
        if n <= self.exact_max:
            return "Flat"
        lists = max(1, round(n / self.list_size))
        return f"IVF{lists}{'' if gpus else '_HNSW32'},{self.codes}"


@dataclass
class SearchConfig:
    """Retrieval's search: exact up to ``exact_max`` pool images, else IVF-PQ (codes of
    d/4 bytes) re-ranked by exact distances of a shortlist, so that PQ costs speed, not
    ranking; the pool's index is cut into parts of ``part_vectors``, one task each."""

    exact_max: int = bounded(100_000, at_least=0)
    factory: str | None = None  # a faiss index_factory string instead of the rule above
    # pool images per IVF list, on average; smaller than dedup's (flat codes): PQ codes
    # quantize each vector's residual to its list's centroid, and larger lists leave
    # larger residuals (1M clustered vectors, nprobe 32: recall@4 0.98 at 256, 0.79 at 1024)
    list_size: int = bounded(256, at_least=1)
    nprobe: int = bounded(32, at_least=1)
    refine_factor: int = bounded(16, at_least=1)  # shortlist of k x this re-ranked
    train_per_list: int = bounded(64, at_least=1)  # IVF training sample per list
    part_vectors: int = bounded(2_000_000, at_least=1)  # pool images one search task holds
    batch: int = bounded(16_384, at_least=1)  # queries per call
    use_gpu: bool = True
    quantizer_ef_search: int = bounded(128, at_least=1)  # see IndexSettings

    def index(self, d: int) -> IndexSettings:
        return IndexSettings(self.exact_max, self.list_size, pq_codes(d), self.factory,
                             self.nprobe, self.refine_factor, self.train_per_list,
                             self.part_vectors, self.batch, self.use_gpu,
                             self.quantizer_ef_search)  # fmt: skip


def pq_codes(d: int) -> str:
    """PQ codes of about d/4 bytes (8-bit sub-quantizers), re-ranked exactly."""
    m = max(1, d // 4)
    while d % m:
        m -= 1
    return f"PQ{m}x8,RFlat"


def empty_index(d: int, factory: str, quantizer_ef_search: int = 128) -> faiss.Index:
    """An untrained inner-product index from a faiss factory string (see
    :func:`tune_quantizer`)."""
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    tune_quantizer(index, quantizer_ef_search)
    return index


def tune_quantizer(index: faiss.Index, ef_search: int) -> None:
    """Let an HNSW coarse quantizer explore ``ef_search`` candidates. faiss's default (16)
    is below nprobe: it put vectors in the wrong lists when they were added (PQ training
    and search too), and retrieval's recall@4 fell from 0.98 to 0.79 (benchmarks/retrieval.py).
    Set before training and adding, and again where a stored index is read."""
    if is_ivf(index) and not quantizer_is_flat(index):
        quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
        quantizer.hnsw.efSearch = ef_search


def training_points(index: faiss.Index, per_list: int) -> int:
    """How many vectors to train ``index`` on: ``per_list`` per IVF list, and at least
    64 per code of 8-bit product quantizers (256 codes), which train beside the lists."""
    try:
        lists = faiss.extract_index_ivf(index).nlist
    except RuntimeError:  # not an IVF index
        lists = 0
    return max(per_list * lists, 64 * 256)


def train_index(index: faiss.Index, sample: np.ndarray) -> None:
    """Train ``index`` (its IVF quantizer, PQ codebooks) on ``sample``, if it needs it."""
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))


def ready_for_search(index: faiss.Index, settings: IndexSettings) -> faiss.Index:
    """``index`` with its search settings, sharded over all GPUs faiss sees where faiss
    can put it (not a refined index, not an HNSW quantizer). Add vectors after this:
    adding on the GPUs is the fast way, and each holds its share."""
    nprobe, refine_factor, use_gpu = settings.nprobe, settings.refine_factor, settings.use_gpu
    if is_ivf(index):
        faiss.extract_index_ivf(index).nprobe = nprobe
        tune_quantizer(index, settings.quantizer_ef_search)
    if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
        faiss.downcast_index(index).k_factor = refine_factor
    if _gpu_clonable(index) and gpu_count(use_gpu):
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True  # each GPU holds a slice of the vectors added next
        return faiss.index_cpu_to_all_gpus(index, co=options)
    return index


def is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def is_plain_ivf(index: faiss.Index) -> bool:
    """An IVF index itself, not one wrapped (refined, sharded, ...)."""
    return isinstance(faiss.downcast_index(index), faiss.IndexIVF)


def quantizer_is_flat(index: faiss.Index) -> bool:
    """Whether an IVF index's coarse quantizer is exhaustive (not HNSW)."""
    return isinstance(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer),
                      faiss.IndexFlat)  # fmt: skip


def _gpu_clonable(index: faiss.Index) -> bool:
    if isinstance(faiss.downcast_index(index), faiss.IndexRefine):
        return False  # faiss has no GPU refine wrapper
    return not is_ivf(index) or quantizer_is_flat(index)


def build_search_index(base: np.ndarray, config: SearchConfig) -> faiss.Index:
    """An inner-product index holding ``base``, in one process (see SearchConfig)."""
    x = np.ascontiguousarray(base, dtype=np.float32)
    n, d = x.shape
    settings = config.index(d)
    gpus = gpu_count(config.use_gpu)
    factory = settings.factory_for(n, gpus)
    index = empty_index(d, factory, settings.quantizer_ef_search)
    if not index.is_trained:
        sample = min(n, training_points(index, config.train_per_list))
        chosen = np.sort(np.random.default_rng(0).choice(n, size=sample, replace=False))
        train_index(index, x[chosen])
    on_gpu = _gpu_clonable(index) and gpus > 0
    index = ready_for_search(index, settings)
    index.add(x)
    log.info("search index %s over %d vectors on %s", factory, n, "GPU" if on_gpu else "CPU")
    return index


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    batch: int = 16_384,
    lists: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, base rows), each (n_queries, k); rows are -1 where fewer exist.
    ``lists``: the queries' IVF lists and their similarities, assigned beforehand (for an
    IVF index that is not wrapped, e.g. by a refinement)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    sims, rows = [], []
    for start in range(0, len(q), batch):
        part = slice(start, start + batch)
        if lists is None:
            s, r = index.search(q[part], k)
        else:  # mode 3 spreads the queries over threads (mode 0 leaves that to search())
            index.parallel_mode = 3
            s, r = index.search_preassigned(q[part], k, lists[0][part], lists[1][part])
        sims.append(s)
        rows.append(r)
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(sims), np.concatenate(rows)
