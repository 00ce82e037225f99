"""Multi-crop augmentation: crop sizes, and the blur and solarize probabilities per crop."""

from __future__ import annotations

import torch

from training.data.augmentations import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    MultiCropConfig,
)


def _checkerboard(size: int = 64, square: int = 4) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = ((x // square + y // square) % 2).float()
    return board.expand(3, size, size).clone()


def _sharpness(crop: torch.Tensor) -> float:
    """Gradient energy: a blur with sigma 2 removes most of it, resampling does not."""
    return float((crop[:, :, 1:] - crop[:, :, :-1]).square().mean())


def test_crop_shapes_and_normalization():
    aug = MultiCropAugmentation(MultiCropConfig(global_size=56, local_size=28, n_local=3))
    out = aug(torch.rand(3, 120, 90))
    assert out["global_crops"].shape == (2, 3, 56, 56)
    assert out["local_crops"].shape == (3, 3, 28, 28)

    config = MultiCropConfig(global_size=16, local_size=8, n_local=2, jitter_p=0.0,
                             grayscale_p=0.0, solarize_p=0.0)  # fmt: skip
    grey = MultiCropAugmentation(config)(torch.full((3, 40, 30), 0.5))
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = ((0.5 - mean) / std).view(3, 1, 1)
    for crops in grey.values():
        torch.testing.assert_close(crops, expected.expand_as(crops), atol=1e-4, rtol=0)


def test_blur_probabilities_are_the_probability_of_blurring():
    """With a strong, fixed blur and no other photometric change, count blurred crops."""
    torch.manual_seed(0)
    config = MultiCropConfig(global_size=64, local_size=64, n_local=1, global_scale=(1.0, 1.0),
                             local_scale=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0,
                             solarize_p=0.0, blur_sigma=(2.0, 2.0))  # fmt: skip
    aug = MultiCropAugmentation(config)
    n = 300  # one batch: each crop of it draws its own blur
    crops = aug.geometric(_checkerboard())
    g1, g2 = (crops["global_crops"][i].expand(n, -1, -1, -1) for i in (0, 1))
    batches = aug.photometric(g1, g2, crops["local_crops"].expand(n, -1, -1, -1))
    rates = [sum(_sharpness(c) < 0.05 for c in batch) / n for batch in batches]
    assert rates[0] == 1.0  # the official code never blurs this crop
    assert 0.05 < rates[1] < 0.16
    assert 0.42 < rates[2] < 0.58


def test_only_the_second_global_crop_is_solarized():
    torch.manual_seed(1)
    config = MultiCropConfig(global_size=32, local_size=32, n_local=4, global_scale=(1.0, 1.0),
                             local_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                             blur_p=(0.0, 0.0, 0.0), solarize_p=1.0)  # fmt: skip
    aug = MultiCropAugmentation(config)
    image = torch.full((3, 32, 32), 0.9)  # above the threshold: solarized to 0.1
    crops = aug.geometric(image)
    g1, g2 = crops["global_crops"].split(1)
    g1, g2, local = aug.photometric(g1, g2, crops["local_crops"])
    normalized = aug.normalize(image[None])
    assert torch.allclose(g1, normalized, atol=1e-3)
    assert torch.allclose(g2, aug.normalize(1 - image[None]), atol=1e-3)
    assert torch.allclose(local, normalized.expand(4, -1, -1, -1), atol=1e-3)


def test_crops_are_antialiased_like_pils_bicubic_resize():
    """Binary noise shrunk 448 -> 224: an aliasing resize keeps far more of its spread."""
    import numpy as np
    from PIL import Image

    from training.data.augmentations import RandomResizedCrops

    noise = (np.random.default_rng(0).random((448, 448)) > 0.5).astype(np.uint8) * 255
    pil = Image.fromarray(noise).resize((224, 224), Image.BICUBIC)
    reference = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255)
    image = torch.from_numpy(noise.astype(np.float32) / 255).expand(3, -1, -1).clone()
    crop = RandomResizedCrops(224, (1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)(image, 1)[0, 0]
    assert abs(float(crop.std()) - float(reference.std())) < 0.02  # PIL: 0.196, kornia: 0.382
    assert float((crop - reference).abs().mean()) < 0.02


def test_crop_boxes_follow_scale_and_ratio():
    from training.data.augmentations import RandomResizedCrops

    torch.manual_seed(0)
    crops = RandomResizedCrops(32, (0.05, 0.32))
    boxes = [crops.box(300, 400) for _ in range(500)]
    fractions = torch.tensor([h * w / (300 * 400) for _, _, h, w in boxes])
    ratios = torch.tensor([w / h for _, _, h, w in boxes])
    assert float(fractions.min()) > 0.045 and float(fractions.max()) < 0.33
    assert float(ratios.min()) > 0.72 and float(ratios.max()) < 1.39
    assert all(t >= 0 and left >= 0 and t + h <= 300 and left + w <= 400
               for t, left, h, w in boxes)  # fmt: skip
