"""Schedules and optimizer parameter groups of the recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

from training.layers.dino_head import DINOHead
from training.models import build_vit
from training.schedules import (
    cosine_schedule,
    linear_warmup_then_constant,
    param_groups,
    param_spec,
    scaled_lr,
)


def test_cosine_with_freeze_and_warmup():
    s = cosine_schedule(1.0, 0.1, total_iters=100, warmup_iters=10, freeze_iters=5)
    assert len(s) == 100
    assert (s[:5] == 0).all()
    np.testing.assert_allclose(s[5:15], np.arange(10) / 10)
    assert s[15] == pytest.approx(1.0)
    assert s[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 84 / 85)))
    assert (np.diff(s[15:]) <= 0).all()
    with pytest.raises(ValueError, match="freeze"):
        cosine_schedule(1.0, 0.0, total_iters=10, warmup_iters=8, freeze_iters=5)


def test_recipe_curves():
    momentum = cosine_schedule(0.994, 1.0, 1000)
    assert momentum[0] == pytest.approx(0.994) and momentum[-1] == pytest.approx(1.0, abs=1e-5)
    temp = linear_warmup_then_constant(0.04, 0.07, 300, 1000)
    assert temp[0] == 0.04 and temp[150] == pytest.approx(0.055) and (temp[300:] == 0.07).all()
    assert scaled_lr(4e-3, 2048) == pytest.approx(4e-3 * math.sqrt(2))


def test_layer_decay_patch_embed_and_no_decay_groups():
    spec = lambda name: param_spec(name, 12, 0.9, 0.2)  # noqa: E731
    assert spec("backbone.blocks.11.mlp.fc1.weight").lr_multiplier == pytest.approx(0.9)
    assert spec("backbone.blocks.0.attn.qkv.weight").lr_multiplier == pytest.approx(0.9**12)
    assert spec("backbone.pos_embed").lr_multiplier == pytest.approx(0.9**13)
    assert spec("backbone.patch_embed.proj.weight").lr_multiplier == pytest.approx(0.9**13 * 0.2)
    assert spec("dino_head.mlp.0.weight").lr_multiplier == 1.0
    assert spec("backbone.blocks.3.ls1.gamma").wd_multiplier == 0.0
    assert spec("backbone.blocks.3.norm1.weight").wd_multiplier == 0.0
    assert spec("backbone.blocks.3.attn.qkv.bias").wd_multiplier == 0.0
    assert spec("backbone.blocks.3.attn.qkv.weight").wd_multiplier == 1.0
    assert spec("dino_head.last_layer.weight_v").is_last_layer


def test_param_groups_cover_every_parameter_once():
    model = nn.ModuleDict(
        {"backbone": build_vit("vit_small", img_size=56), "dino_head": DINOHead(384, 64, 32, 16)}
    )
    groups = param_groups(model, num_layers=12)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert sum(g["is_last_layer"] for g in groups) == 1


@pytest.mark.parametrize("name", ["backbone.pos_embed", "backbone.cls_token",
                                  "backbone.mask_token", "backbone.register_tokens"])  # fmt: skip
def test_tokens_and_position_embeddings_decay_as_in_dinov2(name):
    assert param_spec(name, 12, 0.9, 0.2).wd_multiplier == 1.0
