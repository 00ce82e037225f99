"""The pre-norm transformer block with LayerScale and efficient stochastic depth.

Stochastic depth drops a residual branch for a random subset of samples. Instead of
computing the branch for every sample and multiplying the dropped ones by zero, the
branch runs only on the kept samples (a random subset of each crop group) and is added
back scaled by 1 / keep ratio: with rate 0.4 the block does 60% of the work. It works
for any model size and any mix of crop sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from training.layers.attention import Attention
from training.layers.layer_scale import LayerScale
from training.layers.mlp import Mlp, SwiGLUFFN
from training.layers.packing import Layout

Branch = Callable[[Tensor, Layout], Tensor]


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        ffn: str = "mlp",
        drop_path: float = 0.0,
        init_values: float | None = 1e-5,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        efficient_drop_path: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        ffn_cls = {"mlp": Mlp, "swiglu": SwiGLUFFN}[ffn]
        self.mlp = ffn_cls(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = drop_path
        self.efficient_drop_path = efficient_drop_path

    def _attn_branch(self, x: Tensor, layout: Layout) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), layout))

    def _ffn_branch(self, x: Tensor, layout: Layout) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        """``x``: all tokens of all crops, (T, D), grouped as ``layout`` says."""
        x = self._residual(x, layout, self._attn_branch)
        return self._residual(x, layout, self._ffn_branch)

    def _residual(self, x: Tensor, layout: Layout, branch: Branch) -> Tensor:
        rate = self.drop_path if self.training else 0.0
        if rate <= 0.0:
            return x + branch(x, layout)
        if self.efficient_drop_path:
            return drop_add_residual(x, layout, branch, rate)
        return x + branch(x, layout) * _keep_scale(x, layout, rate)


def _keep_scale(x: Tensor, layout: Layout, rate: float) -> Tensor:
    """Per-token 0 or 1 / (1 - rate), drawn per image (the plain stochastic depth)."""
    scales = [
        (torch.rand(n, 1, device=x.device) >= rate).to(x.dtype).expand(n, length).flatten()
        for n, length in layout.shapes
    ]
    return (torch.cat(scales) / (1.0 - rate)).unsqueeze(1)


def drop_add_residual(x: Tensor, layout: Layout, branch: Branch, rate: float) -> Tensor:
    """``x + branch(x)`` for a random ``1 - rate`` share of each group's images, rescaled."""
    keep = [
        torch.randperm(n, device=x.device)[: max(int(n * (1 - rate)), 1)] for n, _ in layout.shapes
    ]
    rows, kept_layout = layout.sample_rows(keep)
    # index_select, not x[rows]: its gradient is an index_add, the indexing's an
    # accumulating index_put (a sort; 5% of a CPU step)
    residual = branch(x.index_select(0, rows), kept_layout)
    scale = torch.cat(
        [
            torch.full((len(idx) * length,), n / len(idx), device=x.device, dtype=x.dtype)
            for idx, (n, length) in zip(keep, layout.shapes, strict=True)
        ]
    )
    return torch.index_add(x, 0, rows, residual * scale.unsqueeze(1))
