"""The DINOv2 multi-crop augmentation, on kornia.

Two global crops (bicubic random resized crops, scale 0.32-1) and n local crops (scale
0.05-0.32), each flipped, colour-jittered (p 0.8), greyed (p 0.2) and blurred: p 1.0 for
the first global crop, 0.1 for the second, 0.5 for local crops. The official code passes
``1 - p`` to its random-apply, so its first global crop is never blurred; here each
probability is the probability of blurring. The second global crop is also solarized
(p 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MultiCropConfig:
    global_size: int = 224
    local_size: int = 98  # 96 for patch 16
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, local
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.2  # second global crop only


class MultiCropAugmentation:
    """Image (3, H, W) float in [0, 1] -> normalized global and local crops."""

    def __init__(self, config: MultiCropConfig | None = None) -> None:
        self.config = c = config or MultiCropConfig()
        blur1, blur2, blur_local = (self._blur(p) for p in c.blur_p)
        solarize = K.RandomSolarize(thresholds=0.0, additions=0.0, p=c.solarize_p)
        self.global1 = self._pipeline(c.global_size, c.global_scale, blur1)
        self.global2 = self._pipeline(c.global_size, c.global_scale, blur2, solarize)
        self.local = self._pipeline(c.local_size, c.local_scale, blur_local)
        self.normalize = K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD))

    def _blur(self, p: float) -> K.RandomGaussianBlur:
        return K.RandomGaussianBlur(kernel_size=9, sigma=self.config.blur_sigma, p=p)

    def _pipeline(self, size: int, scale: tuple[float, float], *extra) -> K.AugmentationSequential:
        c = self.config
        return K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=scale, resample="BICUBIC"),
            K.RandomHorizontalFlip(p=c.flip_p),
            K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=c.jitter_p),
            K.RandomGrayscale(p=c.grayscale_p),
            *extra,
        )

    def crops(self, image: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Un-normalized crops in [0, 1]: ([global1, global2], [local] * n_local)."""
        x = image.unsqueeze(0)
        global_crops = [self._clamped(self.global1, x), self._clamped(self.global2, x)]
        local = [self._clamped(self.local, x) for _ in range(self.config.n_local)]
        return global_crops, local

    @staticmethod
    def _clamped(pipeline: K.AugmentationSequential, x: Tensor) -> Tensor:
        return pipeline(x).clamp(0.0, 1.0)[0]  # bicubic overshoots [0, 1]

    def __call__(self, image: Tensor) -> dict[str, list[Tensor]]:
        global_crops, local_crops = self.crops(image)
        norm = lambda t: self.normalize(t.unsqueeze(0))[0]  # noqa: E731
        return {
            "global_crops": [norm(t) for t in global_crops],
            "local_crops": [norm(t) for t in local_crops],
        }
