"""Batches of multi-crop samples: crops stacked crop-major, iBOT masks drawn per batch."""

from __future__ import annotations

import random
from typing import Any

import torch

from training.data.masking import BlockMaskGenerator, batch_masks


class MultiCropCollate:
    """Stack ``{"global_crops", "local_crops"}`` samples; ``None`` samples are counted.

    Global crops come out as (2B, 3, S, S): every image's first crop, then every image's
    second crop, the order the losses expect. The mask RNG is seeded from the batch's
    first sample seed (stream batches) or from the worker's torch seed.
    """

    def __init__(
        self,
        patch_grid: tuple[int, int],
        mask_probability: float = 0.5,
        ratio_range: tuple[float, float] = (0.1, 0.5),
    ) -> None:
        self.generator = BlockMaskGenerator(patch_grid)
        self.mask_probability = mask_probability
        self.ratio_range = ratio_range
        self._rng: random.Random | None = None
        self._seed: int | None = None

    def _random(self, samples: list[dict]) -> random.Random:
        if "seed" in samples[0]:  # a stream batch: masks are a function of the batch
            return random.Random(samples[0]["seed"])
        seed = torch.initial_seed()  # differs per DataLoader worker
        if self._rng is None or seed != self._seed:
            self._rng, self._seed = random.Random(seed), seed
        return self._rng

    def __call__(self, samples: list[dict[str, list[torch.Tensor]] | None]) -> dict[str, Any]:
        good = [s for s in samples if s is not None]
        batch: dict[str, Any] = {"skipped": len(samples) - len(good), "size": len(good)}
        if not good:
            return batch
        n_global, n_local = len(good[0]["global_crops"]), len(good[0]["local_crops"])
        batch["global_crops"] = torch.stack(
            [s["global_crops"][i] for i in range(n_global) for s in good]
        )
        batch["local_crops"] = torch.stack(
            [s["local_crops"][i] for i in range(n_local) for s in good]
        )
        batch["masks"] = batch_masks(
            n_global * len(good),
            self.generator,
            self._random(good),
            self.mask_probability,
            self.ratio_range,
        ).flatten(1)
        return batch
