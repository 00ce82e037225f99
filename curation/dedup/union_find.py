"""A disjoint-set forest over row indices that takes edges in chunks (numpy-vectorized).

Edges can stream in shard by shard: memory is one int64 per node plus the current chunk
(and one more per node for :meth:`UnionFind.labels`).
Every component's root is its smallest index, so labels are deterministic whatever the
order in which edges arrive.
"""

from __future__ import annotations

import numpy as np


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, nodes: np.ndarray) -> np.ndarray:
        """Roots of ``nodes``, compressing their paths."""
        nodes = np.asarray(nodes, dtype=np.int64)
        roots = self.parent[nodes]
        while True:
            up = self.parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        self.parent[nodes] = roots
        return roots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the components of each pair ``(a[i], b[i])``.

        Each round hooks the larger root of every pair under the smaller one (several
        pairs hooking one root keep the smallest); pairs still apart go round again.
        """
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        while len(a):
            ra, rb = self.find(a), self.find(b)
            apart = ra != rb
            a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
            np.minimum.at(self.parent, np.maximum(ra, rb), np.minimum(ra, rb))

    def labels(self, chunk: int = 1 << 20) -> np.ndarray:
        """Component label of every node: the smallest index in its component. Found
        ``chunk`` nodes at a time, so the peak is the parents and the labels (16 bytes per
        node), not the temporaries of one pass over all nodes."""
        out = np.empty(len(self.parent), np.int64)
        for start in range(0, len(out), chunk):
            out[start : start + chunk] = self.find(np.arange(start, min(start + chunk, len(out))))
        return out


def components_of_equal_values(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Labels (smallest index) grouping rows whose ``values`` are equal; invalid rows alone."""
    n = len(values)
    labels = np.arange(n, dtype=np.int64)
    rows = np.arange(n) if valid is None else np.flatnonzero(valid)
    if len(rows):
        _, first, inverse = np.unique(values[rows], return_index=True, return_inverse=True)
        labels[rows] = rows[first][inverse]
    return labels
