"""Small composable ViT layers. Blocks take and return a *list* of token tensors, one per
crop size, so every crop of a batch runs in one call (see :mod:`training.layers.packing`).
"""

from training.layers.attention import Attention
from training.layers.block import Block
from training.layers.layer_scale import LayerScale
from training.layers.mlp import Mlp, SwiGLUFFN
from training.layers.packing import PackedTokens
from training.layers.patch_embed import PatchEmbed

__all__ = ["Attention", "Block", "LayerScale", "Mlp", "PackedTokens", "PatchEmbed", "SwiGLUFFN"]
