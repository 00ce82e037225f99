"""Which image of a group is kept, and why each other one is dropped."""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class Reason(StrEnum):
    EXACT_DUPLICATE = "exact_duplicate"  # same bytes as the kept image of its exact group
    HASH_DUPLICATE = "hash_duplicate"  # pHash or PCA hash within the Hamming radius
    COPY_DUPLICATE = "copy_duplicate"  # descriptor kNN graph, cosine above the threshold
    EVALUATION_OVERLAP = "evaluation_overlap"  # its component touches an evaluation image


KEEP_POLICIES = ("largest", "first")  # largest pixel count then smallest id | smallest id


def representatives(
    labels: np.ndarray, pixels: np.ndarray, ids: list[str], policy: str
) -> np.ndarray:
    """Row of the kept image of each row's group: most pixels then smallest id ("largest"),
    or smallest id ("first")."""
    if policy not in KEEP_POLICIES:
        raise ValueError(f"unknown keep policy {policy!r}; known: {KEEP_POLICIES}")
    id_rank = np.argsort(np.argsort(np.asarray(ids, dtype=object)))
    keys = (id_rank,) if policy == "first" else (id_rank, -np.asarray(pixels, dtype=np.int64))
    order = np.lexsort(keys)
    unique, first = np.unique(labels[order], return_index=True)
    chosen = order[first]
    return chosen[np.searchsorted(unique, labels)]


def reasons(
    exact_rep: np.ndarray, hash_rep: np.ndarray, copy_rep: np.ndarray, tainted: np.ndarray
) -> list[str | None]:
    """The first level at which a row is not its group's kept image; evaluation overlap
    overrides, since the whole component is dropped."""
    rows = np.arange(len(exact_rep))
    out: list[str | None] = [None] * len(rows)
    for level, reason in ((copy_rep, Reason.COPY_DUPLICATE), (hash_rep, Reason.HASH_DUPLICATE),
                          (exact_rep, Reason.EXACT_DUPLICATE)):  # fmt: skip
        for i in np.flatnonzero(level != rows):
            out[i] = reason.value
    for i in np.flatnonzero(tainted):
        out[i] = Reason.EVALUATION_OVERLAP.value
    return out
