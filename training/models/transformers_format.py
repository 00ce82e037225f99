"""Our ViT in Hugging Face transformers' DINOv2 layout, both ways.

A directory as ``facebook/dinov2-*`` holds it: ``config.json`` (``model_type`` ``dinov2``
or ``dinov2_with_registers``) and ``model.safetensors`` in the hub checkpoints' key layout
(``attention.attention.query``, ``mlp.weights_in`` ...), which every transformers release
loads (5.x renames them on load). Reading accepts that layout, the one transformers 5
names its modules with (``attention.q_proj``, ``mlp.gate_proj`` ...), sharded or single
safetensors files and ``pytorch_model.bin``.

Position embeddings: transformers resamples the grid by output size (``dinov2``: bicubic;
``dinov2_with_registers``: bicubic with antialiasing). A model read from such a directory
keeps that rule, so it gives transformers' tokens at every size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from manifests.config import ConfigError
from training.models.vision_transformer import VisionTransformer

WEIGHTS = "model.safetensors"
# ours -> the hub checkpoints' names, per block (qkv and layer scale are handled apart)
_BLOCK_NAMES = {
    "norm1": "norm1", "attn.proj": "attention.output.dense", "norm2": "norm2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
}  # fmt: skip
_EMBEDDINGS = {
    "cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias",
}  # fmt: skip
_QKV = ("query", "key", "value")
# transformers 5's module names -> the hub checkpoints'
_V5_NAMES = {
    "attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
    "mlp.down_proj": "mlp.weights_out",
}  # fmt: skip


def transformers_config(model: VisionTransformer) -> dict[str, Any]:
    """``config.json`` for ``model`` (its position grid as ``image_size``)."""
    block = model.blocks[0]
    swiglu = hasattr(block.mlp, "w12")
    registers = model.num_register_tokens
    config = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": model.embed_dim,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": block.attn.num_heads,
        "mlp_ratio": 4 if swiglu else _integer_ratio(block.mlp.fc1.out_features, model.embed_dim),
        "hidden_act": "gelu",
        "layer_norm_eps": model.norm.eps,
        "image_size": model.image_size,
        "patch_size": model.patch_size,
        "num_channels": 3,
        "qkv_bias": block.attn.qkv.bias is not None,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": swiglu,
        "torch_dtype": "float32",
    }
    if registers:
        config["num_register_tokens"] = registers
    return config


def transformers_state_dict(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """``model``'s weights under the hub checkpoints' names (fp32, contiguous)."""
    ours = model.state_dict()
    state = {name: ours[key] for key, name in _EMBEDDINGS.items() if key in ours}
    for i in range(len(model.blocks)):
        ours_prefix, prefix = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for q, part in zip(_QKV, ours[f"{ours_prefix}attn.qkv.{kind}"].chunk(3), strict=True):
                state[f"{prefix}attention.attention.{q}.{kind}"] = part  # fmt: skip
            for key, name in _BLOCK_NAMES.items():
                if f"{ours_prefix}{key}.{kind}" in ours:
                    state[f"{prefix}{name}.{kind}"] = ours[f"{ours_prefix}{key}.{kind}"]
        for n in (1, 2):  # transformers always has layer scale; none is a scale of one
            gamma = ours.get(f"{ours_prefix}ls{n}.gamma", torch.ones(model.embed_dim))
            state[f"{prefix}layer_scale{n}.lambda1"] = gamma
    return {k: v.detach().float().contiguous() for k, v in state.items()}


def is_transformers_dir(path: Path) -> bool:
    """Whether ``path`` is a transformers DINOv2 directory (not one of our run directories)."""
    config = Path(path) / "config.json"
    return config.is_file() and "model_type" in json.loads(config.read_text())


def load_transformers_dir(path: Path) -> VisionTransformer:
    """The ViT of a transformers DINOv2 directory, in eval mode, with transformers'
    position-grid resampling."""
    config = json.loads((path / "config.json").read_text())
    kind = config.get("model_type")
    if kind not in ("dinov2", "dinov2_with_registers"):
        raise ConfigError(f"{path}/config.json: model_type {kind!r}; expected dinov2 or "
                          "dinov2_with_registers")  # fmt: skip
    state = _hub_layout(_read_weights(path))
    registers = config.get("num_register_tokens", 0) if kind != "dinov2" else 0
    patch = _side(config["patch_size"])
    model = VisionTransformer(
        embed_dim=config["hidden_size"], depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"], patch_size=patch,
        img_size=_grid_side(state["embeddings.position_embeddings"]) * patch,
        mlp_ratio=config.get("mlp_ratio", 4),
        ffn="swiglu" if config.get("use_swiglu_ffn") else "mlp",
        num_register_tokens=registers, init_values=1.0,
        interpolate_antialias=bool(registers), interpolate_offset=0.0,
    )  # fmt: skip
    _check_activation(config, path)
    expected = transformers_state_dict(model)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConfigError(f"{path}: {len(missing)} weights missing for a {kind} model, e.g. "
                          f"{missing[:3]}")  # fmt: skip
    model.load_state_dict(_our_layout(state, model), strict=True)
    if "layer_norm_eps" in config:
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = config["layer_norm_eps"]
    return model.eval()


def _our_layout(state: dict[str, torch.Tensor], model: VisionTransformer) -> dict:
    ours = {key: state[name] for key, name in _EMBEDDINGS.items() if name in state}
    ours.setdefault("mask_token", torch.zeros(1, model.embed_dim))
    for i in range(len(model.blocks)):
        ours_prefix, prefix = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{prefix}attention.attention.{q}.{kind}"] for q in _QKV]
            ours[f"{ours_prefix}attn.qkv.{kind}"] = torch.cat(qkv)
            for key, name in _BLOCK_NAMES.items():
                if f"{prefix}{name}.{kind}" in state:
                    ours[f"{ours_prefix}{key}.{kind}"] = state[f"{prefix}{name}.{kind}"]
        for n in (1, 2):
            ours[f"{ours_prefix}ls{n}.gamma"] = state[f"{prefix}layer_scale{n}.lambda1"]
    return ours


def _hub_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names as the hub checkpoints spell them, whichever transformers wrote the file."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("dinov2.")  # a classification model's backbone
        for new, old in _V5_NAMES.items():
            key = key.replace(new, old)
        out[key] = value
    for gate in [k for k in out if ".mlp.gate_proj." in k]:  # SwiGLU halves, fused again
        up = gate.replace("gate_proj", "up_proj")
        out[gate.replace("gate_proj", "weights_in")] = torch.cat([out.pop(gate), out.pop(up)])
    return out


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / WEIGHTS).is_file():
        return load_file(path / WEIGHTS)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state |= load_file(path / shard)
        return state
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no {WEIGHTS}, model.safetensors.index.json or "
                            "pytorch_model.bin beside config.json")  # fmt: skip


def _check_activation(config: dict, path: Path) -> None:
    act = config.get("hidden_act", "gelu")
    if not config.get("use_swiglu_ffn") and act != "gelu":
        raise ConfigError(f"{path}/config.json: hidden_act {act!r}; our ViT's MLP is GELU")


def _integer_ratio(hidden: int, dim: int) -> int:
    if hidden % dim:
        raise ConfigError(f"an MLP of {hidden} over a width of {dim}: transformers' DINOv2 "
                          "config holds a whole mlp_ratio")  # fmt: skip
    return hidden // dim


def _grid_side(pos_embed: torch.Tensor) -> int:
    return math.isqrt(pos_embed.shape[1] - 1)


def _side(size: int | list[int]) -> int:
    return size if isinstance(size, int) else int(size[0])
