"""Gram anchoring (DINOv3): keep the patch-to-patch similarity structure of the student
close to an earlier teacher's, so that patch features stay sharp over long runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gram_loss(student_patches: Tensor, teacher_patches: Tensor, remove_neg: bool = False) -> Tensor:
    """``mean_b ||X_b X_b^T - Y_b Y_b^T||^2 / N^2`` over the images b of (B, N, D) patch
    tokens, each token L2-normalised (X: student, Y: Gram teacher), in float32. With
    ``remove_neg`` negative similarities count as 0 on both sides (dinov3's option, off in
    its Gram-anchoring recipe)."""
    with torch.autocast(student_patches.device.type, enabled=False):
        x = F.normalize(student_patches.float(), dim=-1)
        y = F.normalize(teacher_patches.float(), dim=-1)
        student, target = x @ x.transpose(-1, -2), y @ y.transpose(-1, -2)
        if remove_neg:
            student, target = student.clamp_min(0), target.clamp_min(0)
        return F.mse_loss(student, target)
