"""Distillation (dinov2 paper, section 5): a frozen, larger teacher's DINO and iBOT heads
give the targets; the student trains without masking or stochastic depth, with the iBOT
loss on every patch of its two global crops; the EMA of the student (the trainer's usual
teacher, no longer used for targets) is the model a run saves. dinov2 released no code for
it; dinov3 did (``ssl_meta_arch._setup_distillation``), and asserts, as we do, that the
heads' prototypes and the patch size of teacher and student agree."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from manifests.config import ConfigError, from_dict
from training.checkpoint import latest_checkpoint, load_submodules
from training.models.loading import is_run_directory, load_backbone
from training.ssl_meta_arch import SSLConfig, build_heads, build_networks

log = logging.getLogger(__name__)


@dataclass
class DistillationConfig:
    enabled: bool = False
    # the teacher: a run directory of training.train, a transformers DINOv2 directory, or an
    # official backbone weights file
    teacher: str = ""
    arch: str | None = None  # for a weights file: its architecture (vit_giant2, ...)


def load_teacher(config: DistillationConfig, student: SSLConfig, device) -> nn.ModuleDict:
    """The frozen teacher (backbone, DINO head, iBOT head when it has its own) in eval mode.

    From a run directory: the backbone the run saved and its teacher's heads from its
    latest checkpoint. From a weights file or a transformers directory (the official
    releases carry no heads): the backbone, and heads built as the student's and frozen at
    their random init, which makes the targets a fixed random projection of the teacher's
    features (a warning says so)."""
    if not config.teacher:
        raise ConfigError("distillation.enabled needs distillation.teacher: a run directory, a "
                          "transformers DINOv2 directory or an official weights file "
                          "(--set distillation.teacher=PATH)")  # fmt: skip
    path = Path(config.teacher)
    patch = student.backbone.patch_size
    backbone = load_backbone(path, config.arch, patch)
    if backbone.patch_size != patch:
        raise ConfigError(f"distillation.teacher {path}: patch size {backbone.patch_size}, the "
                          f"student's is {patch}; iBOT pairs their patches one to one")  # fmt: skip
    if is_run_directory(path):
        teacher_config = _run_model_config(path)
        nets = build_networks(teacher_config)
        _load_heads(path, nets)
        nets["backbone"] = backbone
    else:
        log.warning("distillation.teacher %s holds a backbone without DINO/iBOT heads: the "
                    "teacher's heads are random and frozen", path)  # fmt: skip
        teacher_config = student
        nets = nn.ModuleDict({"backbone": backbone, **build_heads(student, backbone.embed_dim)})
    _check_heads_match(teacher_config, student, path)
    for p in nets.parameters():
        p.requires_grad_(False)
    return nets.to(device).eval()


def _run_model_config(run: Path) -> SSLConfig:
    config = json.loads((run / "config.json").read_text())
    return from_dict(SSLConfig, config["model"], f"{run}/config.json:model")


def _load_heads(run: Path, nets: nn.ModuleDict) -> None:
    """The teacher heads of ``run``'s latest checkpoint into ``nets``."""
    found = latest_checkpoint(run / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"{run}/checkpoints: no checkpoint to take the teacher's heads "
                                "from")  # fmt: skip
    load_submodules(found, {f"teacher.{n}": m for n, m in nets.items() if n != "backbone"})


def _check_heads_match(teacher: SSLConfig, student: SSLConfig, path: Path) -> None:
    """Teacher and student must score the same prototypes (dinov3 asserts it too)."""

    def ibot_prototypes(c: SSLConfig) -> int:
        return c.ibot_prototypes if c.ibot_separate_head else c.head_prototypes

    pairs = {"head_prototypes": (teacher.head_prototypes, student.head_prototypes),
             "iBOT prototypes": (ibot_prototypes(teacher), ibot_prototypes(student))}  # fmt: skip
    for name, (t, s) in pairs.items():
        if t != s:
            raise ConfigError(f"distillation.teacher {path}: its heads have {name} {t}, the "
                              f"student's {s}; set the student's to {t}")  # fmt: skip
