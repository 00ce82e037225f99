"""Images listed in a manifest, decoded for training; bad images are skipped and counted.

Where a row's image lives and how its bytes are read: :mod:`manifests.image_rows`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from manifests.image_rows import ImageBytesReader, ImageRow, require_image_rows
from training.models.preprocess import image_tensor

log = logging.getLogger(__name__)


class ManifestImageDataset(Dataset):
    """Decoded RGB images (3, H, W) in [0, 1], passed through ``transform``.

    An image that is missing or cannot be decoded yields ``None`` (and a warning naming
    it); the collate function drops it and counts it, so one bad file never ends a run.
    """

    def __init__(self, rows: list[ImageRow], transform: Callable | None = None) -> None:
        self.rows = rows  # as manifests.image_rows.read_image_rows returns them
        self.transform = transform
        self.images = ImageBytesReader()  # per worker process

    @classmethod
    def from_manifests(
        cls, paths: list[str | Path], transform: Callable | None = None
    ) -> ManifestImageDataset:
        return cls(require_image_rows(paths), transform)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        """``item`` is an index, or ``(index, seed)``: the seed fixes the augmentation."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        row = self.rows[index]
        try:
            tensor = image_tensor(self.images.read(row))
        except Exception as exc:  # noqa: BLE001 - any bad image is skipped, never fatal
            log.warning("skipping image %s (%s): %s", row["id"], row["source"], exc)
            return None
        if self.transform is None:
            return tensor
        if seed is not None:  # the CPU generator only: torch.manual_seed would also queue
            torch.default_generator.manual_seed(seed)  # a CUDA seeding with a stack trace
        sample = self.transform(tensor)
        if seed is not None and isinstance(sample, dict):
            sample["seed"] = seed
        return sample
