"""A backbone's input: encoded bytes -> an RGB tensor, and the deterministic evaluation
transform (the random training ones are in :mod:`training.data.augmentations`).

Curation's embedder reads images the way the trainer and k-NN evaluation do, so these
live beside the models rather than in the trainer's data package.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from manifests.image_rows import open_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_tensor(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> RGB (3, H, W) float in [0, 1]; raises on undecodable bytes."""
    with open_image(data) as image:
        pixels = np.asarray(image.convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)


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
