"""iBOT masks: block shapes, exact masked counts, the batch plan."""

from __future__ import annotations

import random

import pytest
import torch

from training.data.masking import BlockMaskGenerator, batch_masks


@pytest.mark.parametrize("num_masked", [0, 3, 20, 128, 256])
def test_mask_has_exactly_the_requested_patches(num_masked):
    gen = BlockMaskGenerator((16, 16))
    mask = gen(num_masked, random.Random(num_masked))
    assert mask.shape == (16, 16) and int(mask.sum()) == num_masked


def test_masks_are_made_of_blocks_not_scattered_patches():
    gen = BlockMaskGenerator((16, 16))
    mask = gen(80, random.Random(0)).int()
    # patches whose right or lower neighbour is also masked: high for blocks (~0.9), ~0.3 at random
    neighbours = (mask[:, :-1] & mask[:, 1:]).sum() + (mask[:-1] & mask[1:]).sum()
    assert neighbours / mask.sum() > 1.2


def test_batch_plan_masks_half_the_crops_over_the_ratio_range():
    gen = BlockMaskGenerator((16, 16))
    masks = batch_masks(64, gen, random.Random(1))
    counts = masks.sum(dim=1)
    masked = counts[counts > 0]
    assert masks.shape == (64, 256) and len(masked) == 32
    ratios = torch.sort(masked.float() / 256).values
    assert 0.1 <= ratios[0] < 0.12 and 0.48 < ratios[-1] <= 0.5
    assert (ratios[1:] >= ratios[:-1]).all()
    # spread evenly: the ratio quantiles follow a uniform distribution over [0.1, 0.5]
    expected = torch.linspace(0.1, 0.5, 33)[:-1] + 0.2 / 32 / 2
    assert (ratios - expected).abs().max() < 0.2 / 32 + 1 / 256


def test_same_seed_same_masks():
    gen = BlockMaskGenerator((7, 7))
    assert torch.equal(batch_masks(8, gen, random.Random(5)), batch_masks(8, gen, random.Random(5)))
