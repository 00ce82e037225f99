"""Our ViT as a timm model directory: ``config.json`` (timm's hub format: architecture,
model_args, pretrained_cfg) and ``model.safetensors`` in timm's own key layout, loadable with
``timm.create_model("local-dir:DIR", pretrained=True)``.

timm's DINOv2 models have a fixed input size (the position grid is not resampled per
forward), so the directory is for one image size: the grid as the model holds it. Register
models are timm's ``no_embed_class`` kind: the CLS position is added to the CLS token and
``pos_embed`` holds the patch grid alone.
"""

from __future__ import annotations

from typing import Any

import torch

from training.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from training.models.vision_transformer import VisionTransformer

# timm's DINOv2 definitions with an MLP, by width (model_args override the rest); its giant
# is the one with SwiGLU
_TIMM_SIZES = {384: "small", 768: "base", 1024: "large"}


def timm_config(model: VisionTransformer) -> dict[str, Any]:
    """timm's ``config.json`` for ``model`` at the size of its position grid."""
    side = model.image_size
    block = model.blocks[0]
    swiglu = hasattr(block.mlp, "w12")
    registers = model.num_register_tokens
    size = "giant" if swiglu else _TIMM_SIZES.get(model.embed_dim, "small")
    if swiglu:  # timm's hidden width is int(dim * mlp_ratio): a ratio that gives our fused width
        mlp_ratio = (block.mlp.w12.out_features + 0.5) / model.embed_dim
    else:
        mlp_ratio = block.mlp.fc1.out_features / model.embed_dim
    model_args: dict[str, Any] = {
        "img_size": side, "patch_size": model.patch_size, "embed_dim": model.embed_dim,
        "depth": len(model.blocks), "num_heads": block.attn.num_heads, "mlp_ratio": mlp_ratio,
        "init_values": 1.0, "qkv_bias": block.attn.qkv.bias is not None,
    }  # fmt: skip
    if registers:
        model_args |= {"reg_tokens": registers, "no_embed_class": True}
    architecture = f"vit_{size}_patch14{'_reg4' if registers else ''}_dinov2"
    return {
        "architecture": architecture,
        "num_classes": 0,
        "num_features": model.embed_dim,
        "global_pool": "token",
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, side, side], "fixed_input_size": True, "interpolation": "bicubic",
            "crop_pct": 1.0, "crop_mode": "center", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "num_classes": 0, "first_conv": "patch_embed.proj",
            "classifier": "head", "license": "apache-2.0",
        },
    }  # fmt: skip


def timm_state_dict(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """``model``'s weights under timm's names (what timm's DINOv2 filter makes of dinov2's)."""
    state = {k: v.detach().float() for k, v in model.state_dict().items() if k != "mask_token"}
    if model.num_register_tokens:
        state["reg_token"] = state.pop("register_tokens")
        pos = state.pop("pos_embed")
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
    for i, _ in enumerate(model.blocks):
        for n in (1, 2):  # timm's LayerScale holds a scale of one where ours has none
            state.setdefault(f"blocks.{i}.ls{n}.gamma", torch.ones(model.embed_dim))
        for ours, theirs in (("w12", "fc1"), ("w3", "fc2")):  # SwiGLUPacked's names
            for kind in ("weight", "bias"):
                key = f"blocks.{i}.mlp.{ours}.{kind}"
                if key in state:
                    state[f"blocks.{i}.mlp.{theirs}.{kind}"] = state.pop(key)
    return {k: v.contiguous() for k, v in state.items()}
