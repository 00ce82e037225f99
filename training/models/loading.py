"""Load a ViT backbone from our run directory or from an official DINOv2 weights file."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from manifests.config import ConfigError, from_dict
from training.models.config import BackboneConfig, backbone_section, build_backbone
from training.models.transformers_format import is_transformers_dir, load_transformers_dir
from training.models.vision_transformer import VisionTransformer, build_vit


def load_backbone(checkpoint: Path, arch: str | None, patch_size: int) -> VisionTransformer:
    """Our run directory (config.json + teacher_backbone.pth), a transformers DINOv2
    directory (config.json + model.safetensors), or an official .pth file (then ``arch`` and
    ``patch_size`` say which ViT it is). Returns the model in eval mode."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: no backbone weights (no such run directory, "
                                "transformers directory or weights file)")  # fmt: skip
    if is_transformers_dir(checkpoint):
        return load_transformers_dir(checkpoint)
    if checkpoint.is_dir():
        config = json.loads((checkpoint / "config.json").read_text())
        backbone = from_dict(BackboneConfig, backbone_section(config["model"]),
                             f"{checkpoint}/config.json:model.backbone")  # fmt: skip
        weights = checkpoint / "teacher_backbone.pth"
        state = _weights(weights)
        # the grid as saved: a run's high-resolution phase resizes it
        grid = official_layout(state, backbone.patch_size).get("img_size", backbone.img_size)
        model = build_backbone(replace(backbone, img_size=grid))  # LayerScale, depth as trained
    else:
        if arch is None:
            raise ConfigError(f"{checkpoint}: a weights file needs an architecture (vit_small)")
        state = _weights(checkpoint)
        model = build_vit(arch, patch_size, **official_layout(state, patch_size))
    model.load_state_dict(state, strict=True)
    return model.eval()


def add_backbone_arguments(p: argparse.ArgumentParser, flag: str = "--checkpoint") -> None:
    """A command's backbone: ``flag`` (into ``args.checkpoint``) and, for a bare weights
    file, ``--arch`` and ``--patch-size``: what :func:`load_backbone` takes."""
    p.add_argument(flag, dest="checkpoint", required=True, type=Path,
                   help="a run directory of training.train, a transformers DINOv2 directory, "
                        "or a weights file")  # fmt: skip
    p.add_argument("--arch", help="for a bare weights file: vit_small, vit_base, ...")
    p.add_argument("--patch-size", type=int, default=14,
                   help="for a bare weights file (default 14)")  # fmt: skip


def is_run_directory(path: Path) -> bool:
    """Whether ``path`` is one of our training runs (a transformers directory also holds a
    config.json)."""
    return Path(path).is_dir() and not is_transformers_dir(Path(path))


def evaluation_size(checkpoint: Path, model: VisionTransformer) -> int:
    """The image size a backbone from ``checkpoint`` embeds at: a run's global crop size, a
    transformers directory's crop size (its preprocessor_config.json), else its grid's."""
    checkpoint = Path(checkpoint)
    if is_transformers_dir(checkpoint):
        processor = checkpoint / "preprocessor_config.json"
        if processor.is_file():
            crop = json.loads(processor.read_text()).get("crop_size", {})
            return int(crop.get("height", model.image_size))
    elif is_run_directory(checkpoint):
        return json.loads((checkpoint / "config.json").read_text())["crops"]["global_size"]
    return model.image_size


def official_layout(state: dict[str, torch.Tensor], patch_size: int) -> dict[str, Any]:
    """What an official DINOv2 state dict says of its model beyond the architecture: the
    size of its position grid, and its register tokens: the ``_reg`` models also sample
    that grid with antialiasing and no offset (dinov2's hub definitions); the others use
    the 0.1 offset."""
    layout: dict[str, Any] = {}
    if "pos_embed" in state:
        layout["img_size"] = math.isqrt(state["pos_embed"].shape[1] - 1) * patch_size
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    if registers:
        layout |= {"num_register_tokens": registers, "interpolate_antialias": True,
                   "interpolate_offset": 0.0}  # fmt: skip
    return layout


def _weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no backbone weights (expected a state dict .pth)")
    return torch.load(path, map_location="cpu", weights_only=True)
