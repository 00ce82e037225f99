"""The DINOv2 objective: DINO on CLS tokens, iBOT on masked patches, KoLeo, teacher centering;
DINOv3's Gram anchoring."""

from training.loss.centering import EMACenter, sinkhorn_knopp
from training.loss.dino_clstoken_loss import dino_loss
from training.loss.gram_loss import gram_loss
from training.loss.ibot_patch_loss import ibot_loss
from training.loss.koleo_loss import koleo_loss

__all__ = ["EMACenter", "dino_loss", "gram_loss", "ibot_loss", "koleo_loss", "sinkhorn_knopp"]
