"""The DINOv2 Vision Transformer, parameter for parameter like the official hub models.

Names and shapes follow facebookresearch/dinov2 (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``register_tokens``, ``mask_token``, ``blocks.N.{norm1,attn.qkv,attn.proj,
ls1.gamma,norm2,mlp.fc1,mlp.fc2 | mlp.w12,mlp.w3,ls2.gamma}``, ``norm``), so an official
checkpoint loads with ``strict=True``. Unlike the official code, a forward over a list of
crop batches runs every block once for all crops (packed linear layers, attention per
crop), on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.layers import Block, LayerScale, PatchEmbed
from training.layers.packing import Layout


@dataclass(frozen=True)
class Architecture:
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"


ARCHITECTURES = {
    "vit_tiny": Architecture(192, 12, 3),  # small-data experiments (DeiT-Ti size)
    "vit_small": Architecture(384, 12, 6),
    "vit_base": Architecture(768, 12, 12),
    "vit_large": Architecture(1024, 24, 16),
    "vit_huge": Architecture(1280, 32, 16),  # the curation embedder's size (H/16)
    "vit_giant2": Architecture(1536, 40, 24, ffn="swiglu"),
}


class VisionTransformer(nn.Module):
    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        patch_size: int = 14,
        img_size: int = 518,
        mlp_ratio: float = 4.0,
        ffn: str = "mlp",
        num_register_tokens: int = 0,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        init_values: float | None = 1e-5,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        efficient_drop_path: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            if num_register_tokens
            else None
        )
        rates = (
            [drop_path_rate] * depth
            if drop_path_uniform
            else torch.linspace(0, drop_path_rate, depth).tolist()
        )
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, ffn, rate, init_values,
                  efficient_drop_path=efficient_drop_path)
            for rate in rates
        )  # fmt: skip
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                module.reset_parameters()

    @property
    def image_size(self) -> int:
        """The side of the images the learned position grid is for (no resampling)."""
        return math.isqrt(self.pos_embed.shape[1] - 1) * self.patch_size

    def interpolate_pos_encoding(self, height: int, width: int) -> Tensor:
        """Position embeddings for an image of ``height`` x ``width`` pixels (bicubic)."""
        rows, cols = height // self.patch_size, width // self.patch_size
        n = self.pos_embed.shape[1] - 1
        if rows * cols == n and rows == cols:
            return self.pos_embed
        return resample_position_grid(
            self.pos_embed, rows, cols, self.interpolate_antialias, self.interpolate_offset
        )

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Patch tokens (masked ones replaced by the mask token), CLS, positions, registers."""
        _, _, height, width = x.shape
        tokens = self.patch_embed(x)
        if masks is not None:
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(height, width)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        return tokens

    def forward_features(
        self, x: Tensor | list[Tensor], masks: Tensor | list[Tensor | None] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Normalized CLS, register and patch tokens; a list of inputs gives a list of outputs,
        all crops going through each block together."""
        if isinstance(x, Tensor):
            return self.forward_features([x], [masks])[0]
        masks = masks if masks is not None else [None] * len(x)
        groups = [self.prepare_tokens(xi, mi) for xi, mi in zip(x, masks, strict=True)]
        layout = Layout.of(groups)
        tokens = layout.pack(groups) if len(groups) > 1 else groups[0].flatten(0, 1)
        for block in self.blocks:
            tokens = block(tokens, layout)
        r = 1 + self.num_register_tokens
        outputs = []
        for prenorm, normed, mask in zip(
            layout.unpack(tokens), layout.unpack(self.norm(tokens)), masks, strict=True
        ):
            outputs.append(
                {
                    "x_norm_clstoken": normed[:, 0],
                    "x_norm_regtokens": normed[:, 1:r],
                    "x_norm_patchtokens": normed[:, r:],
                    "x_prenorm": prenorm,
                    "masks": mask,
                }
            )
        return outputs

    def get_intermediate_layers(self, x: Tensor, n: int = 1) -> list[tuple[Tensor, Tensor]]:
        """(patch tokens, CLS token) after each of the last ``n`` blocks, each normalized by
        the final norm (dinov2's ``get_intermediate_layers(norm=True)``): the linear
        probe's inputs."""
        tokens = self.prepare_tokens(x)
        layout = Layout.of([tokens])
        flat, outputs = tokens.flatten(0, 1), []
        for depth, block in enumerate(self.blocks):
            flat = block(flat, layout)
            if depth >= len(self.blocks) - n:
                outputs.append(self.norm(flat).unflatten(0, tokens.shape[:2]))
        r = 1 + self.num_register_tokens
        return [(out[:, r:], out[:, 0]) for out in outputs]

    def forward(self, x: Tensor) -> Tensor:
        """The normalized CLS token, as the official models return."""
        return self.head(self.forward_features(x)["x_norm_clstoken"])


def resample_position_grid(
    pos_embed: Tensor, rows: int, cols: int, antialias: bool = True, offset: float = 0.0
) -> Tensor:
    """``pos_embed`` (1, 1 + g*g, D): its CLS position, then its g x g grid resampled to
    ``rows`` x ``cols`` bicubically. ``offset`` > 0 samples as the official non-register
    models do (a scale factor of (rows + offset) / g), kept for their weights; 0 and
    antialiasing is how the _reg models load, and how a high-resolution phase resizes the
    learned grid."""
    side = math.isqrt(pos_embed.shape[1] - 1)
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:].float()
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if offset:
        size_kw = {"scale_factor": ((rows + offset) / side, (cols + offset) / side)}
    else:
        size_kw = {"size": (rows, cols)}
    patch_pos = F.interpolate(patch_pos, mode="bicubic", antialias=antialias, **size_kw)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat((cls_pos, patch_pos.to(cls_pos.dtype)), dim=1)


def build_vit(
    arch: str, patch_size: int = 14, depth: int = 0, ffn: str | None = None, **kwargs
) -> VisionTransformer:
    """A ViT by name (``vit_small``, ``vit_base``, ``vit_large``, ``vit_huge``, ``vit_giant2``);
    ``depth`` > 0 replaces the architecture's number of blocks, ``ffn`` (``mlp`` or
    ``swiglu``) its feed-forward layer (the released weights: SwiGLU for g only; the
    official training recipes: SwiGLU for L and g)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    a = ARCHITECTURES[arch]
    return VisionTransformer(
        embed_dim=a.embed_dim, depth=depth or a.depth, num_heads=a.num_heads, patch_size=patch_size,
        ffn=ffn or a.ffn, **kwargs,
    )  # fmt: skip
