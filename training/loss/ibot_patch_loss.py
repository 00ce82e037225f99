"""iBOT: cross-entropy on the masked patch tokens of the global crops."""

from __future__ import annotations

import torch
from torch import Tensor


def ibot_loss(
    student_logits: Tensor, teacher_targets: Tensor, masks: Tensor, student_temp: float = 0.1
) -> Tensor:
    """``-(1/B) sum_i (1/m_i) sum_{masked j of image i} sum_k target_jk log p_jk``.

    ``student_logits`` and ``teacher_targets`` are (M, K) for the M masked patches, in the
    row-major order of ``masks`` (B, N) booleans; each image's patches share a weight of
    1 / its masked count, so images with many masked patches do not dominate.
    """
    per_patch = (
        teacher_targets * torch.log_softmax(student_logits.float() / student_temp, -1)
    ).sum(-1)
    counts = masks.sum(dim=-1, keepdim=True).clamp(min=1).expand_as(masks)[masks]
    return -(per_patch / counts).sum() / masks.shape[0]
