"""Small composable ViT layers. Blocks take all tokens of all crops as one (T, D) matrix
with its :class:`Layout`, so every crop of a batch runs in one call (see
:mod:`training.layers.packing`).
"""

from training.layers.attention import Attention
from training.layers.block import Block
from training.layers.layer_scale import LayerScale
from training.layers.mlp import Mlp, SwiGLUFFN
from training.layers.packing import Layout
from training.layers.patch_embed import PatchEmbed

__all__ = ["Attention", "Block", "LayerScale", "Mlp", "Layout", "PatchEmbed", "SwiGLUFFN"]
