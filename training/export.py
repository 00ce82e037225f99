"""A trained backbone where users already load DINOv2 models:
``python -m training.export --run RUN_DIR --format transformers|timm --out DIR``.

``transformers``: ``config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json``),
loadable offline with ``AutoModel.from_pretrained(DIR)``. ``timm``: timm's hub layout, for
``timm.create_model("local-dir:DIR", pretrained=True)``. ``--run`` takes our run directory,
a transformers DINOv2 directory, or an official weights file with ``--arch``.

The position grid is written at ``--image-size`` (default: the grid the model holds),
resampled by the model's own rule: at that size every library gives the model's tokens.
At other sizes transformers resamples by its own rule (dinov2's released ViTs without
registers use an offset transformers does not), and timm's DINOv2 models take one size only.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from manifests.config import ConfigError, describe
from manifests.errors import PATH_ERRORS, error_line
from training.models.loading import add_backbone_arguments, load_backbone
from training.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from training.models.timm_format import timm_config, timm_state_dict
from training.models.transformers_format import (
    WEIGHTS,
    transformers_config,
    transformers_state_dict,
)
from training.models.vision_transformer import VisionTransformer

FORMATS = ("transformers", "timm")


def at_image_size(model: VisionTransformer, size: int) -> VisionTransformer:
    """A copy of ``model`` whose position grid is for ``size`` px images (the model's own
    resampling of its grid)."""
    if size % model.patch_size:
        raise ConfigError(f"--image-size {size} is not a multiple of the patch size "
                          f"{model.patch_size}")  # fmt: skip
    resized = copy.deepcopy(model)
    with torch.no_grad():
        resized.pos_embed = torch.nn.Parameter(model.interpolate_pos_encoding(size, size).clone())
    return resized


def export(model: VisionTransformer, fmt: str, out: Path) -> Path:
    """Write ``model`` in ``fmt`` to the directory ``out`` (replaced whole: a reader never sees
    half a directory). Returns ``out``."""
    if fmt == "transformers":
        files = {"config.json": transformers_config(model),
                 "preprocessor_config.json": _image_processor(model)}  # fmt: skip
        state = transformers_state_dict(model)
    elif fmt == "timm":
        files, state = {"config.json": timm_config(model)}, timm_state_dict(model)
    else:
        raise ConfigError(f"--format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(state, partial / WEIGHTS, metadata={"format": "pt"})
    (partial / WEIGHTS).chmod(0o644)  # safetensors writes 0600; the config files are 0644
    for name, content in files.items():
        (partial / name).write_text(json.dumps(content, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def _image_processor(model: VisionTransformer) -> dict:
    """transformers' image processor of the hub's DINOv2 models (BitImageProcessor: shorter
    side to 256/224 of the crop, bicubic, centre crop), at the grid's size."""
    crop = model.image_size
    return {
        "image_processor_type": "BitImageProcessor", "do_resize": True,
        "size": {"shortest_edge": round(crop * 256 / 224)}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": crop, "width": crop},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
        "do_convert_rgb": True,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=describe(__doc__))
    add_backbone_arguments(p, "--run")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, type=Path, help="the directory to write")
    p.add_argument("--image-size", type=int, help="the position grid's image size")
    args = p.parse_args(argv)  # fmt: skip
    try:
        model = load_backbone(args.checkpoint, args.arch, args.patch_size)
        if args.image_size:
            model = at_image_size(model, args.image_size)
        out = export(model, args.format, args.out)
    except (ConfigError, *PATH_ERRORS) as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps({"format": args.format, "out": str(out),
                      "image_size": model.image_size}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
