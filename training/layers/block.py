"""The pre-norm transformer block with LayerScale and efficient stochastic depth.

Stochastic depth drops a residual branch for a random subset of samples. Instead of
computing the branch for every sample and multiplying the dropped ones by zero, the
branch runs only on the kept samples (a subset of each crop group, chosen by a random
permutation) and is added back scaled by 1 / keep ratio: with rate 0.4 the block does
60% of the work. It works for any model size and any mix of crop sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from training.layers.attention import Attention
from training.layers.layer_scale import LayerScale
from training.layers.mlp import Mlp, SwiGLUFFN
from training.layers.packing import tokenwise

Branch = Callable[[list[Tensor]], list[Tensor]]


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

    def _attn_branch(self, groups: list[Tensor]) -> list[Tensor]:
        return tokenwise(self.ls1, self.attn(tokenwise(self.norm1, groups)))

    def _ffn_branch(self, groups: list[Tensor]) -> list[Tensor]:
        return tokenwise(lambda t: self.ls2(self.mlp(self.norm2(t))), groups)

    def forward(self, groups: list[Tensor]) -> list[Tensor]:
        groups = self._residual(groups, self._attn_branch)
        return self._residual(groups, self._ffn_branch)

    def _residual(self, groups: list[Tensor], branch: Branch) -> list[Tensor]:
        rate = self.drop_path if self.training else 0.0
        if rate <= 0.0:
            return [x + b for x, b in zip(groups, branch(groups), strict=True)]
        if self.efficient_drop_path:
            return drop_add_residual(groups, branch, rate)
        return [x + b * _keep_mask(x, rate) for x, b in zip(groups, branch(groups), strict=True)]


def _keep_mask(x: Tensor, rate: float) -> Tensor:
    keep = torch.rand(x.shape[0], 1, 1, device=x.device, dtype=x.dtype) >= rate
    return keep.to(x.dtype) / (1.0 - rate)


def drop_add_residual(groups: list[Tensor], branch: Branch, rate: float) -> list[Tensor]:
    """``x + branch(x)`` for a random ``1 - rate`` share of each group's samples, rescaled."""
    kept = [torch.randperm(x.shape[0], device=x.device)[: max(int(x.shape[0] * (1 - rate)), 1)]
            for x in groups]  # fmt: skip
    residuals = branch([x[idx] for x, idx in zip(groups, kept, strict=True)])
    return [
        torch.index_add(x, 0, idx, r.to(x.dtype), alpha=x.shape[0] / len(idx))
        for x, idx, r in zip(groups, kept, residuals, strict=True)
    ]
