"""Backbones."""

from training.models.vision_transformer import ARCHITECTURES, VisionTransformer, build_vit

__all__ = ["ARCHITECTURES", "VisionTransformer", "build_vit"]
