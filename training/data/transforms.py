"""Deterministic evaluation transforms (the random training ones are in augmentations)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from training.data.augmentations import IMAGENET_MEAN, IMAGENET_STD


def center_crop_transform(
    size: int,
    resize: int | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Image (3, H, W) in [0, 1] -> shorter side to ``resize`` (default size * 256 / 224,
    bicubic, antialiased), a centered ``size`` square, then ``(x - mean) / std``."""
    resize = resize or round(size * 256 / 224)
    mean_t = torch.tensor(mean)[:, None, None]
    std_t = torch.tensor(std)[:, None, None]

    def transform(image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[1:]
        scale = resize / min(h, w)
        target = (max(size, round(h * scale)), max(size, round(w * scale)))
        image = F.interpolate(image[None], size=target, mode="bicubic", antialias=True)
        image = image[0].clamp(0, 1)
        top, left = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
        return (image[:, top : top + size, left : left + size] - mean_t) / std_t

    return transform
