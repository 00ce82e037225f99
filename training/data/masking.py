"""BEiT-style block masking for iBOT, and the per-batch mask plan of DINOv2.

A mask is grown from rectangular blocks (at least ``min_block`` patches each, aspect
ratio between 0.3 and 1/0.3) until it covers the target number of patches. In a batch,
only a share of the global crops is masked (half by default), with mask ratios spread
evenly over [0.1, 0.5] so every batch sees the whole range.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor


class BlockMaskGenerator:
    def __init__(
        self,
        grid: tuple[int, int],
        min_block: int = 4,
        max_block: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        tries: int = 10,
    ) -> None:
        self.height, self.width = grid
        self.min_block = min_block
        self.max_block = max_block
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
        self.tries = tries

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def __call__(self, num_masked: int, rng: random.Random) -> Tensor:
        """A (height, width) boolean mask with exactly ``num_masked`` True patches."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        target = min(num_masked, self.num_patches)
        stalled = 0
        while int(mask.sum()) < target and stalled < self.tries:
            added = self._add_block(mask, target - int(mask.sum()), rng)
            stalled = 0 if added else stalled + 1
        return _top_up(mask, target, rng)

    def _add_block(self, mask: Tensor, budget: int, rng: random.Random) -> int:
        max_block = min(budget, self.max_block or budget)
        if max_block < self.min_block:
            return 0
        for _ in range(self.tries):
            area = rng.uniform(self.min_block, max_block)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if 0 < h <= self.height and 0 < w <= self.width:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                region = mask[top : top + h, left : left + w]
                new = int((~region).sum())
                if 0 < new <= budget:
                    region.fill_(True)
                    return new
        return 0


def _top_up(mask: Tensor, target: int, rng: random.Random) -> Tensor:
    """Blocks rarely hit the target exactly (they never exceed it): add single random patches."""
    free = (~mask).flatten().nonzero().flatten().tolist()
    missing = target - int(mask.sum())
    if missing > 0:
        flat = mask.flatten()
        flat[rng.sample(free, missing)] = True
        mask = flat.view_as(mask)
    return mask


def batch_masks(
    n_crops: int,
    generator: BlockMaskGenerator,
    rng: random.Random,
    probability: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
) -> Tensor:
    """(n_crops, N) masks: ``probability`` of the crops masked, ratios spread over the range."""
    n_masked = int(n_crops * probability)
    lo, hi = ratio_range
    edges = torch.linspace(lo, hi, n_masked + 1).tolist()
    n = generator.num_patches
    masks = [
        generator(int(n * rng.uniform(edges[i], edges[i + 1])), rng).flatten()
        for i in range(n_masked)
    ]
    masks += [torch.zeros(n, dtype=torch.bool)] * (n_crops - n_masked)
    order = list(range(n_crops))
    rng.shuffle(order)
    return torch.stack([masks[i] for i in order])
