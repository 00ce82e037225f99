"""Batches of multi-crop samples: crops stacked crop-major, batched photometric
augmentation, iBOT masks drawn per batch."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from training.data.masking import BlockMaskGenerator, batch_masks

Photometric = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


class MultiCropCollate:
    """Stack ``{"global_crops": (2, 3, S, S), "local_crops": (n, 3, s, s)}`` samples;
    ``None`` samples are counted and dropped.

    Global crops come out as (2B, 3, S, S): every image's first crop, then every image's
    second crop, the order the losses expect; local crops likewise. ``photometric``
    (``MultiCropAugmentation.photometric``) then runs once on the whole batch. Its RNG and
    the mask RNG are seeded from the batch's first sample seed (stream batches, so a batch
    is a function of its index) or follow the worker's torch seed.
    """

    def __init__(
        self,
        patch_grid: tuple[int, int],
        mask_probability: float = 0.5,
        ratio_range: tuple[float, float] = (0.1, 0.5),
        photometric: Photometric | None = None,
    ) -> None:
        self.generator = BlockMaskGenerator(patch_grid)
        self.mask_probability = mask_probability
        self.ratio_range = ratio_range
        self.photometric = photometric
        self._rng: random.Random | None = None
        self._seed: int | None = None

    def _random(self, samples: list[dict]) -> random.Random:
        if "seed" in samples[0]:  # a stream batch: masks are a function of the batch
            return random.Random(samples[0]["seed"])
        seed = torch.initial_seed()  # differs per DataLoader worker
        if self._rng is None or seed != self._seed:
            self._rng, self._seed = random.Random(seed), seed
        return self._rng

    def _augment(self, samples: list[dict], g1: Tensor, g2: Tensor, local: Tensor):
        if self.photometric is None:
            return g1, g2, local
        if "seed" not in samples[0]:
            return self.photometric(g1, g2, local)
        with torch.random.fork_rng(devices=[]):
            # not the first sample's crop stream; the CPU generator alone, as in the dataset
            torch.default_generator.manual_seed(samples[0]["seed"] + 1)
            return self.photometric(g1, g2, local)

    def __call__(self, samples: list[dict[str, Tensor] | None]) -> dict[str, Any]:
        good = [s for s in samples if s is not None]
        batch: dict[str, Any] = {"skipped": len(samples) - len(good), "size": len(good)}
        if not good:
            return batch
        global_crops = torch.stack([s["global_crops"] for s in good], dim=1)  # (2, B, ...)
        local_crops = torch.stack([s["local_crops"] for s in good], dim=1).flatten(0, 1)
        g1, g2, local = self._augment(good, global_crops[0], global_crops[1], local_crops)
        batch["global_crops"] = torch.cat([g1, g2])
        batch["local_crops"] = local
        batch["masks"] = batch_masks(
            len(global_crops) * len(good),
            self.generator,
            self._random(good),
            self.mask_probability,
            self.ratio_range,
        ).flatten(1)
        return batch
