"""Sequence packing: crops of different sizes as one token matrix.

A multi-crop batch has groups of different sequence lengths (2 x 224 px and 8 x 98 px
crops). Token-wise layers (norms, linears, MLPs, residual adds) do not care which
sequence a token belongs to, so the blocks keep all tokens in one ``(T, D)`` matrix and
only attention looks at the groups, through views of that matrix (no copies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Layout:
    """The groups of a packed matrix: ``(n_images, tokens_per_image)`` each, in row order."""

    shapes: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, groups: list[Tensor]) -> Layout:
        return cls(tuple((g.shape[0], g.shape[1]) for g in groups))

    @property
    def sizes(self) -> list[int]:
        return [n * length for n, length in self.shapes]

    def pack(self, groups: list[Tensor]) -> Tensor:
        return torch.cat([g.reshape(-1, g.shape[-1]) for g in groups])

    def unpack(self, flat: Tensor) -> list[Tensor]:
        """Per-group ``(n, L, C)`` views of a ``(T, C)`` matrix laid out like this one."""
        pieces = zip(flat.split(self.sizes), self.shapes, strict=True)
        return [t.view(n, length, -1) for t, (n, length) in pieces]

    def sample_rows(self, keep: list[Tensor]) -> tuple[Tensor, Layout]:
        """Token rows of the kept images (``keep[i]``: image indices in group i), and the
        layout of the matrix those rows form."""
        rows, offset = [], 0
        for idx, (n, length) in zip(keep, self.shapes, strict=True):
            within = torch.arange(length, device=idx.device)
            rows.append((offset + idx[:, None] * length + within).flatten())
            offset += n * length
        layout = Layout(
            tuple((len(i), length) for i, (_, length) in zip(keep, self.shapes, strict=True))
        )
        return torch.cat(rows), layout
