"""Sequence packing: crops of different sizes as one token matrix for the linear layers.

A multi-crop batch has groups of different sequence lengths (2 x 224 px and 8 x 98 px
crops). Token-wise layers (norms, linears, MLPs) do not care which sequence a token
belongs to, so they run once on all tokens concatenated; attention is the only layer
that must stay within each crop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class PackedTokens:
    """Groups of shape ``(n_i, L_i, D)`` flattened into one ``(sum n_i L_i, D)`` matrix."""

    def __init__(self, groups: list[Tensor]) -> None:
        self.shapes = [(g.shape[0], g.shape[1]) for g in groups]
        self.flat = torch.cat([g.reshape(-1, g.shape[-1]) for g in groups])

    def split(self, flat: Tensor) -> list[Tensor]:
        """Undo the packing for a matrix with the same rows (any number of columns)."""
        sizes = [n * length for n, length in self.shapes]
        return [
            t.reshape(n, length, -1)
            for t, (n, length) in zip(flat.split(sizes), self.shapes, strict=True)
        ]


def tokenwise(fn: Callable[[Tensor], Tensor], groups: list[Tensor]) -> list[Tensor]:
    """Apply a token-wise function to all groups in one call."""
    if len(groups) == 1:
        return [fn(groups[0])]
    packed = PackedTokens(groups)
    return packed.split(fn(packed.flat))
