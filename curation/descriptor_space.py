"""The space in which copy-detection cosines are taken, fitted on a sample of the pool."""

from __future__ import annotations

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)

NORMALIZATIONS = ("none", "center", "whiten")


class DescriptorSpace:
    """Where cosine similarities are taken, fitted on the pool's descriptors.

    ``none``: L2-normalized as they are (SSCD's own space, where the paper's thresholds
    hold). ``center``: minus the pool mean (pooled CNN features are all positive, so
    unrelated images sit at cosine 0.5 or more). ``whiten``: PCA whitening to
    ``whiten_dim`` dimensions (faiss.PCAMatrix, eigenvalue power -0.5), which damps the
    few directions that say what an image shows and keeps those that say which image it
    is; it needs more pool images than dimensions, else it falls back to ``center``.
    It is fitted on what it is given (a sample of the pool); fitted, it is plain numpy
    (the PCA as a matrix and a bias), so tasks receive it pickled.
    """

    def __init__(self, mode: str, whiten_dim: int = 256) -> None:
        self.mode, self.whiten_dim = mode, whiten_dim
        self.mean: np.ndarray | None = None
        self.matrix: np.ndarray | None = None  # whitening: y = matrix @ x + bias
        self.bias: np.ndarray | None = None

    def fit(self, vectors: np.ndarray) -> DescriptorSpace:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.mode == "whiten" and len(x) <= self.whiten_dim:
            log.warning("whitening needs more than %d descriptors, got %d: centring instead",
                        self.whiten_dim, len(x))  # fmt: skip
            self.mode = "center"
        if self.mode == "center":
            self.mean = x.mean(axis=0)
        elif self.mode == "whiten":
            pca = faiss.PCAMatrix(x.shape[1], min(self.whiten_dim, x.shape[1]), -0.5)
            pca.train(x)
            self.matrix = faiss.vector_to_array(pca.A).reshape(pca.d_out, pca.d_in)
            self.bias = faiss.vector_to_array(pca.b)
        return self

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.mean is not None:
            x = np.ascontiguousarray(x - self.mean)
        if self.matrix is not None:
            x = np.ascontiguousarray(x @ self.matrix.T + self.bias, dtype=np.float32)
        faiss.normalize_L2(x)
        return x
