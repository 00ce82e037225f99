"""The DINO/iBOT projection head: a 3-layer MLP to a bottleneck, L2 norm, then
weight-normalized prototypes (the logits over ``out_dim`` prototypes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return self.last_layer(F.normalize(x, dim=-1, eps=eps))


class WeightNormLinear(nn.Module):
    """Prototypes ``w_k = g_k v_k / |v_k|`` without a bias (names as in the official heads).

    Written out rather than with ``torch.nn.utils.parametrizations``: FSDP2 shards plain
    parameters, and the official checkpoints name these ``weight_g`` and ``weight_v``.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        nn.init.ones_(self.weight_g)

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)
