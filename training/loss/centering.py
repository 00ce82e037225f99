"""Turning teacher logits into targets: Sinkhorn-Knopp, or softmax after EMA centering.

Both reduce over the whole global batch: with ``torch.distributed`` initialized, the
sums (and the EMA center's batch mean) are all-reduced across ranks, so every rank
computes the same normalization as a single process holding the whole batch would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _all_reduce(t: Tensor, op=None) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """Targets for the rows of ``logits`` (B, K) that spread mass evenly over prototypes.

    Q = exp(logits / T)^T is normalized by its global sum, then ``iterations`` times its
    rows (prototypes, sums all-reduced) and its columns (samples); each returned row
    sums to 1. B counts the samples of all ranks.
    """
    logits = logits.float()
    shift = _all_reduce(logits.max().clone(), dist.ReduceOp.MAX) if logits.numel() else 0.0
    q = torch.exp((logits - shift) / temperature).t()  # K x B; the shift cancels out
    n_prototypes = q.shape[0]
    n_samples = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples
    return (q * n_samples).t()


class EMACenter(nn.Module):
    """The DINO center: an EMA of the teacher's batch-mean logits, subtracted before softmax.

    A module with a buffer, so that moving the model (``.to(device)``) moves the center.
    The buffer is not persistent: checkpoints store the centers themselves
    (:mod:`training.checkpoint`), which loads them into this buffer.
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim), persistent=False)

    @torch.no_grad()
    def softmax(self, logits: Tensor, temperature: float) -> Tensor:
        return torch.softmax((logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, logits: Tensor) -> None:
        batch_sum = _all_reduce(logits.float().sum(dim=0, keepdim=True))
        batch_mean = batch_sum / (logits.shape[0] * _world_size())
        self.center.mul_(self.momentum).add_(batch_mean, alpha=1 - self.momentum)
