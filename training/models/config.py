"""The backbone's settings and the ViT they build: what a run trains and what loads its
weights back (the SSL recipe nests these as ``model.backbone``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from training.models.vision_transformer import VisionTransformer, build_vit


@dataclass
class BackboneConfig:
    arch: str = "vit_small"
    patch_size: int = 14
    depth: int = 0  # blocks; 0: the architecture's own
    ffn_layer: str | None = None  # mlp | swiglu; None: the architecture's own
    img_size: int = 224  # size of the learned position grid: the global crops' (dinov2)
    num_register_tokens: int = 0
    drop_path_rate: float = 0.0
    layerscale: float = 1e-5
    efficient_drop_path: bool = True


def build_backbone(config: BackboneConfig) -> VisionTransformer:
    """The ViT these settings describe."""
    return build_vit(
        config.arch, config.patch_size, depth=config.depth, ffn=config.ffn_layer,
        img_size=config.img_size, num_register_tokens=config.num_register_tokens,
        drop_path_rate=config.drop_path_rate, init_values=config.layerscale,
        efficient_drop_path=config.efficient_drop_path,
    )  # fmt: skip


def backbone_section(model: dict[str, Any]) -> dict[str, Any]:
    """The backbone's settings in a run's saved ``model`` config: ``model.backbone``, or,
    in runs written before it was nested, the backbone's keys of ``model`` itself."""
    if "backbone" in model:
        return model["backbone"]
    names = {f.name for f in fields(BackboneConfig)}
    return {k: v for k, v in model.items() if k in names}
