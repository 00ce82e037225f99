"""Multi-head self-attention restricted to each crop of a packed multi-crop batch.

The qkv and output projections run once on all tokens; attention itself runs per group:
PyTorch SDPA per crop size everywhere, or, on CUDA with xFormers installed, one
block-diagonal memory-efficient kernel over all crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.layers.packing import Layout

try:  # CUDA-only fast path
    from xformers.ops import fmha as xformers_fmha
except ImportError:  # pragma: no cover - depends on the machine
    xformers_fmha = None


class Attention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        """``x`` is the packed (T, D) token matrix; returns the same shape."""
        qkv = layout.unpack(self.qkv(x))
        if xformers_fmha is not None and x.is_cuda:
            out = self._attend_xformers(qkv)
        else:
            out = [self._attend_sdpa(g) for g in qkv]
        flat = out[0].flatten(0, 1) if len(out) == 1 else torch.cat([o.flatten(0, 1) for o in out])
        return self.proj(flat)

    def _heads(self, qkv: Tensor) -> Tensor:
        n, length, _ = qkv.shape
        return qkv.reshape(n, length, 3, self.num_heads, -1)

    def _attend_sdpa(self, qkv: Tensor) -> Tensor:
        q, k, v = self._heads(qkv).permute(2, 0, 3, 1, 4)  # each (n, heads, L, hd)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).flatten(2)  # (n, L, D)

    def _attend_xformers(self, qkv: list[Tensor]) -> list[Tensor]:
        bias, packed = xformers_fmha.BlockDiagonalMask.from_tensor_list(
            [self._heads(g) for g in qkv]
        )
        q, k, v = packed.unbind(2)  # each (1, T, heads, hd)
        out = xformers_fmha.memory_efficient_attention(q, k, v, attn_bias=bias)
        return [o.flatten(2) for o in bias.split(out)]
