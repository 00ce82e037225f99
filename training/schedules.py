"""The recipe's schedules and optimizer parameter groups.

Schedules are arrays indexed by iteration (cheap to look up, exact to resume): cosine
with linear warmup and an optional frozen start. Parameter groups carry the per-group
multipliers the step applies: layer-wise lr decay, the patch-embed lr multiplier, no
weight decay on biases, norms and LayerScale, and a flag for the head's last layer,
which stays frozen for the first epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn


def cosine_schedule(
    base: float,
    final: float,
    total_iters: int,
    warmup_iters: int = 0,
    start_warmup: float = 0.0,
    freeze_iters: int = 0,
) -> np.ndarray:
    """``freeze_iters`` zeros, a linear warmup to ``base``, then cosine to ``final``."""
    frozen = np.zeros(freeze_iters)
    warmup = np.linspace(start_warmup, base, warmup_iters, endpoint=False)
    rest = total_iters - freeze_iters - warmup_iters
    if rest < 0:
        raise ValueError(
            f"freeze ({freeze_iters}) + warmup ({warmup_iters}) > total ({total_iters})"
        )
    steps = np.arange(rest)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(rest, 1)))
    return np.concatenate((frozen, warmup, cosine))


def linear_warmup_then_constant(
    start: float, end: float, warmup_iters: int, total_iters: int
) -> np.ndarray:
    """The teacher temperature: ``start`` to ``end`` linearly, then ``end``."""
    warmup = np.linspace(start, end, warmup_iters, endpoint=False)
    return np.concatenate((warmup, np.full(max(total_iters - warmup_iters, 0), end)))


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The recipe's base lr is per 1024 images; it scales with the square root of the batch."""
    return base_lr * math.sqrt(batch_size / 1024)


@dataclass(frozen=True)
class ParamGroupSpec:
    lr_multiplier: float
    wd_multiplier: float
    is_last_layer: bool


_EMBEDDING_NAMES = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def param_spec(
    name: str, num_layers: int, layer_decay: float, patch_embed_lr_mult: float
) -> ParamGroupSpec:
    """Multipliers for the parameter ``name`` of a student (``backbone.*``, heads)."""
    layer_id = num_layers + 1  # heads and the final norm: the full lr
    if name.startswith("backbone."):
        if any(f".{e}" in name for e in _EMBEDDING_NAMES):
            layer_id = 0
        elif ".blocks." in name:
            layer_id = int(name.split(".blocks.")[1].split(".")[0]) + 1
    lr_mult = layer_decay ** (num_layers + 1 - layer_id)
    if ".patch_embed." in name:
        lr_mult *= patch_embed_lr_mult
    # as dinov2: biases, norms and LayerScale gammas only; the tokens and pos_embed decay
    no_decay = name.endswith(".bias") or "norm" in name or "gamma" in name
    return ParamGroupSpec(lr_mult, 0.0 if no_decay else 1.0, "last_layer" in name)


def param_groups(
    model: nn.Module, num_layers: int, layer_decay: float = 0.9, patch_embed_lr_mult: float = 0.2
) -> list[dict]:
    """AdamW groups, one per distinct (lr mult, wd mult, last layer) triple."""
    groups: dict[ParamGroupSpec, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        spec = param_spec(name, num_layers, layer_decay, patch_embed_lr_mult)
        group = groups.setdefault(
            spec,
            {"params": [], "lr_multiplier": spec.lr_multiplier,
             "wd_multiplier": spec.wd_multiplier, "is_last_layer": spec.is_last_layer},
        )  # fmt: skip
        group["params"].append(param)
    return list(groups.values())
