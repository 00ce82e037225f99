"""DINO: cross-entropy between teacher targets and student predictions on CLS tokens."""

from __future__ import annotations

import torch
from torch import Tensor


def dino_loss(
    student_logits: list[Tensor], teacher_targets: list[Tensor], student_temp: float = 0.1
) -> Tensor:
    """Mean over (teacher global crop, student crop) pairs of -sum(target * log p_student).

    ``student_logits`` holds one (B, K) tensor per crop, the global crops first, in the
    order of ``teacher_targets`` (one (B, K) per global crop); a student global crop is
    never paired with the teacher's view of the same crop.
    """
    total, terms = student_logits[0].new_zeros(()), 0
    for s, logits in enumerate(student_logits):
        log_p = torch.log_softmax(logits.float() / student_temp, dim=-1)
        for t, target in enumerate(teacher_targets):
            if s == t:
                continue
            total = total - (target * log_p).sum(dim=-1).mean()
            terms += 1
    return total / terms
