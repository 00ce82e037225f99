"""Load a ViT backbone from our run directory or from an official DINOv2 weights file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from manifests.config import ConfigError, from_dict
from training.models.vision_transformer import VisionTransformer, build_vit
from training.ssl_meta_arch import SSLConfig, build_backbone


def load_backbone(checkpoint: Path, arch: str | None, patch_size: int) -> VisionTransformer:
    """Our run directory (config.json + teacher_backbone.pth) or an official .pth file
    (then ``arch`` and ``patch_size`` say which ViT it is). Returns the model in eval mode."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: no backbone weights (no such run directory or "
                                "weights file)")  # fmt: skip
    if checkpoint.is_dir():
        config = json.loads((checkpoint / "config.json").read_text())
        ssl = from_dict(SSLConfig, config["model"], f"{checkpoint}/config.json:model")
        model = build_backbone(ssl)  # LayerScale, registers and depth as trained
        weights = checkpoint / "teacher_backbone.pth"
    else:
        if arch is None:
            raise ConfigError(f"{checkpoint}: a weights file needs an architecture (vit_small)")
        model, weights = build_vit(arch, patch_size), checkpoint
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: no backbone weights (expected a state dict .pth)")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
