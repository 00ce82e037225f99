"""The DINOv2 multi-crop augmentation, on kornia.

Two global crops (bicubic random resized crops, scale 0.32-1) and n local crops (scale
0.05-0.32), each flipped, colour-jittered (p 0.8), greyed (p 0.2) and blurred: p 1.0 for
the first global crop, 0.1 for the second, 0.5 for local crops. The official code passes
``1 - p`` to its random-apply, so its first global crop is never blurred; here each
probability is the probability of blurring. The second global crop is also solarized
(p 0.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor

from training.models.preprocess import IMAGENET_MEAN, IMAGENET_STD


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


class RandomResizedCrops:
    """Random resized crops of one image, each flipped with ``flip_p``: an area fraction in
    ``scale`` and a log-uniform aspect ratio in ``ratio`` (torchvision's sampling), resized
    bicubic with antialiasing, as PIL's bicubic resize does when it shrinks. kornia's
    RandomResizedCrop does not antialias: a 448 -> 224 crop of fine detail aliases."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
    ) -> None:
        self.size, self.scale, self.flip_p = size, scale, flip_p
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = ratio

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of one crop, from the torch RNG."""
        area = height * width
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.scale))
            aspect = math.exp(float(torch.empty(1).uniform_(*self.log_ratio)))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                return top, left, h, w
        aspect = width / height  # the fallback: the central crop of the nearest ratio
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: Tensor, n: int) -> Tensor:
        """``n`` crops (n, 3, size, size) in [0, 1] of ``image`` (3, H, W)."""
        crops = []
        for _ in range(n):
            top, left, h, w = self.box(*image.shape[1:])
            region = image[None, :, top : top + h, left : left + w]
            size = (self.size, self.size)
            crop = F.interpolate(region, size=size, mode="bicubic", antialias=True)
            if float(torch.rand(1)) < self.flip_p:
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.cat(crops).clamp(0, 1)  # bicubic resampling overshoots [0, 1]


class MultiCropAugmentation:
    """Image (3, H, W) float in [0, 1] -> normalized global and local crops, in two stages.

    ``geometric`` runs per image (random resized crops and flips; every image has its own
    size). ``photometric`` runs on a whole batch of crops at once (jitter, grey, blur,
    solarize, normalization): one kornia call per operation and crop kind instead of one
    per crop, which is what makes augmentation of small crops cheap enough for a CPU.
    ``__call__`` chains both for a single image.
    """

    def __init__(self, config: MultiCropConfig | None = None) -> None:
        self.config = c = config or MultiCropConfig()
        self.global_geometry = self._geometry(c.global_size, c.global_scale)
        self.local_geometry = self._geometry(c.local_size, c.local_scale)
        self.jitter = K.AugmentationSequential(
            K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=c.jitter_p), K.RandomGrayscale(p=c.grayscale_p)
        )
        self.blur1, self.blur2, self.blur_local = (self._blur(p) for p in c.blur_p)
        self.solarize = K.RandomSolarize(thresholds=0.0, additions=0.0, p=c.solarize_p)
        self.normalize = K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD))

    def _blur(self, p: float) -> K.RandomGaussianBlur:
        return K.RandomGaussianBlur(kernel_size=9, sigma=self.config.blur_sigma, p=p)

    def _geometry(self, size: int, scale: tuple[float, float]) -> RandomResizedCrops:
        return RandomResizedCrops(size, scale, flip_p=self.config.flip_p)

    def geometric(self, image: Tensor) -> dict[str, Tensor]:
        """Crops in [0, 1] of one image: global (2, 3, S, S) and local (n, 3, s, s)."""
        global_crops = self.global_geometry(image, 2)
        local_crops = self.local_geometry(image, self.config.n_local)
        return {"global_crops": global_crops, "local_crops": local_crops}

    def photometric(
        self, global1: Tensor, global2: Tensor, local: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Batches of first global, second global and local crops -> normalized crops."""
        global1 = self.blur1(self.jitter(global1))
        global2 = self.solarize(self.blur2(self.jitter(global2)))
        local = self.blur_local(self.jitter(local)) if len(local) else local
        return tuple(self.normalize(t.clamp(0.0, 1.0)) if len(t) else t
                     for t in (global1, global2, local))  # fmt: skip

    def __call__(self, image: Tensor) -> dict[str, Tensor]:
        crops = self.geometric(image)
        g1, g2 = crops["global_crops"].split(1)
        g1, g2, local = self.photometric(g1, g2, crops["local_crops"])
        return {"global_crops": torch.cat([g1, g2]), "local_crops": local}
