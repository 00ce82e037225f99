"""Student, EMA teacher and the DINOv2 objective for one batch of multi-crop views.

The batch holds ``global_crops`` (2B images: all first crops, then all second crops),
``local_crops`` (nB images, in the same crop-major order) and ``masks`` (2B, N) for the
global crops. The student sees every crop, with the masked patches of its global crops
replaced by the mask token; the teacher sees the unmasked global crops.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from manifests.config import ConfigError
from training.layers.dino_head import DINOHead
from training.loss import EMACenter, dino_loss, gram_loss, ibot_loss, koleo_loss, sinkhorn_knopp
from training.models.config import BackboneConfig, build_backbone

N_GLOBAL_CROPS = 2


@dataclass
class GramConfig:
    """DINOv3's Gram anchoring (dinov3/loss/gram_loss.py; values of its recipe in
    configs/train/official.yaml): from ``start_iteration`` a frozen copy of the EMA teacher,
    refreshed every ``refresh_every`` iterations at most ``max_refreshes`` times, anchors
    the Gram matrix of the student's global-crop patch features. Off at weight 0."""

    weight: float = 0.0
    start_iteration: int = 0
    refresh_every: int = 10_000
    max_refreshes: int = 3
    teacher_scale: float = 1.0  # the Gram teacher sees the global crops this much larger
    remove_neg: bool = False

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def refreshes(self) -> set[int]:
        """Iterations before which the Gram teacher becomes a copy of the EMA teacher."""
        return {self.start_iteration + k * self.refresh_every
                for k in range(self.max_refreshes + 1)}  # fmt: skip


@dataclass
class SSLConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    packed: bool = True  # all crops through each block in one call
    head_prototypes: int = 65536
    head_hidden: int = 2048
    head_bottleneck: int = 256
    ibot_separate_head: bool = True
    ibot_prototypes: int = 65536  # with a separate iBOT head; a shared one has head_prototypes
    ibot_bottleneck: int = 256  # with a separate iBOT head (dinov2's ibot.head_bottleneck_dim)
    centering: str = "sinkhorn_knopp"  # or "ema"
    student_temp: float = 0.1
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    gram: GramConfig = field(default_factory=GramConfig)


def build_networks(config: SSLConfig) -> nn.ModuleDict:
    """Backbone, DINO head and (when separate) iBOT head of one side, student or teacher."""
    backbone = build_backbone(config.backbone)
    return nn.ModuleDict({"backbone": backbone, **build_heads(config, backbone.embed_dim)})


def build_heads(config: SSLConfig, dim: int) -> dict[str, nn.Module]:
    """The DINO head and (when separate) the iBOT head over features of width ``dim``."""
    heads = {"dino_head": DINOHead(dim, config.head_prototypes, config.head_hidden,
                                   config.head_bottleneck)}  # fmt: skip
    if config.ibot_separate_head:
        heads["ibot_head"] = DINOHead(dim, config.ibot_prototypes, config.head_hidden,
                                      config.ibot_bottleneck)  # fmt: skip
    return heads


def ibot_head_of(nets: nn.ModuleDict) -> nn.Module:
    """The head that scores patches: the iBOT head, or the DINO head where it is shared."""
    return nets["ibot_head"] if "ibot_head" in nets else nets["dino_head"]


class SSLMetaArch(nn.Module):
    """The student and its EMA teacher. The teacher starts as a copy of the student's
    weights but is built without stochastic depth and stays in eval mode, as in dinov2:
    its targets are a deterministic function of its input."""

    def __init__(self, config: SSLConfig) -> None:
        super().__init__()
        self.config = config
        self.student = build_networks(config)
        self.teacher = build_networks(replace(config, backbone=replace(config.backbone,
                                                                  drop_path_rate=0.0)))  # fmt: skip
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.dino_center = EMACenter(config.head_prototypes)
        ibot_out = config.ibot_prototypes if config.ibot_separate_head else config.head_prototypes
        self.ibot_center = EMACenter(ibot_out)
        if config.gram.enabled:  # in the checkpoints, so a resumed run anchors to the same
            self.gram_teacher = nn.ModuleDict({"backbone": copy.deepcopy(self.teacher["backbone"])})
            self.gram_teacher.requires_grad_(False)

    def start_from(self, backbone: nn.Module) -> None:
        """Student, teacher (and Gram teacher) backbones from ``backbone``'s weights: its
        position grid resampled to theirs by its own rule, everything else as it is."""
        ours = self.student["backbone"]
        state = backbone.state_dict()
        with torch.no_grad():
            state["pos_embed"] = backbone.interpolate_pos_encoding(ours.image_size, ours.image_size)
        try:
            for module in (self.student, self.teacher, getattr(self, "gram_teacher", {})):
                if "backbone" in module:
                    module["backbone"].load_state_dict(state, strict=True)
        except RuntimeError as exc:  # names what does not match (sizes, registers, depth)
            raise ConfigError(f"init: the weights do not fit model.backbone: {exc}") from exc

    def train(self, mode: bool = True) -> SSLMetaArch:
        """Train (or evaluate) the student; the teachers are always in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if self.config.gram.enabled:
            self.gram_teacher.eval()
        return self

    def _targets(self, logits: Tensor, temp: float, center: EMACenter) -> Tensor:
        if self.config.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temp)
        targets = center.softmax(logits, temp)
        center.update(logits)
        return targets

    @torch.no_grad()
    def teacher_targets(
        self, global_crops: Tensor, masks: Tensor, temp: float, nets: nn.ModuleDict | None = None
    ):
        """DINO targets per global crop, and iBOT targets for the masked patches, from
        ``nets`` (a distillation teacher) or the EMA teacher."""
        nets = self.teacher if nets is None else nets
        out = nets["backbone"].forward_features(global_crops)
        cls_logits = nets["dino_head"](out["x_norm_clstoken"])
        patches = out["x_norm_patchtokens"][masks]
        patch_logits = ibot_head_of(nets)(patches)
        dino = self._targets(cls_logits, temp, self.dino_center).chunk(N_GLOBAL_CROPS)
        ibot = self._targets(patch_logits, temp, self.ibot_center)
        return list(dino), ibot

    def _student_features(self, global_crops: Tensor, local_crops: Tensor, masks: Tensor | None):
        backbone = self.student["backbone"]
        if self.config.packed:
            return backbone.forward_features([global_crops, local_crops], [masks, None])
        return [
            backbone.forward_features(global_crops, masks),
            backbone.forward_features(local_crops),
        ]

    def forward(
        self,
        batch: dict[str, Tensor],
        teacher_temp: float,
        distill_from: nn.ModuleDict | None = None,
        gram_weight: float = 0.0,
    ) -> dict[str, Tensor]:
        """The loss terms and their weighted sum ``loss`` for one batch. With a frozen
        ``distill_from`` teacher (training/distillation.py) its heads give the targets, the
        student sees no mask tokens and iBOT covers every patch of the global crops. With a
        ``gram_weight``, the Gram anchoring term joins the sum."""
        c = self.config
        global_crops, local_crops, masks = (
            batch["global_crops"],
            batch["local_crops"],
            batch["masks"],
        )
        token_masks = masks
        if distill_from is not None:
            masks, token_masks = torch.ones_like(masks), None
        dino_targets, ibot_targets = self.teacher_targets(
            global_crops, masks, teacher_temp, distill_from
        )
        g, loc = self._student_features(global_crops, local_crops, token_masks)
        global_cls = g["x_norm_clstoken"]
        n_local = local_crops.shape[0] // (global_crops.shape[0] // N_GLOBAL_CROPS)
        cls_logits = self.student["dino_head"](torch.cat([global_cls, loc["x_norm_clstoken"]]))
        per_crop = cls_logits.chunk(N_GLOBAL_CROPS + n_local)
        terms = {"dino_loss": dino_loss(list(per_crop), dino_targets, c.student_temp)}
        terms["dino_target_entropy"] = relative_entropy(torch.cat(dino_targets))
        masked_logits = ibot_head_of(self.student)(g["x_norm_patchtokens"][masks])
        terms["ibot_loss"] = ibot_loss(masked_logits, ibot_targets, masks, c.student_temp)
        terms["koleo_loss"] = sum(koleo_loss(x) for x in global_cls.chunk(N_GLOBAL_CROPS))
        terms["loss"] = (
            c.dino_weight * terms["dino_loss"]
            + c.ibot_weight * terms["ibot_loss"]
            + c.koleo_weight * terms["koleo_loss"]
        )
        if gram_weight:
            terms["gram_loss"] = self._gram_term(global_crops, g["x_norm_patchtokens"])
            terms["loss"] = terms["loss"] + gram_weight * terms["gram_loss"]
        return terms

    def _gram_term(self, global_crops: Tensor, student_patches: Tensor) -> Tensor:
        """Gram anchoring of the student's (masked) global-crop patches to the Gram
        teacher's on the clean crops, upscaled by ``teacher_scale`` and its features
        resized back to the student's grid (bicubic, as dinov3)."""
        gram = self.config.gram
        with torch.no_grad():
            side = global_crops.shape[-1]
            patch = self.gram_teacher["backbone"].patch_size
            if gram.teacher_scale != 1:
                size = int(side * gram.teacher_scale) // patch * patch
                global_crops = F.interpolate(global_crops, size=(size, size), mode="bicubic")
            target = self.gram_teacher["backbone"].forward_features(global_crops)
            target = resize_patch_grid(target["x_norm_patchtokens"], side // patch)
        return gram_loss(student_patches, target, gram.remove_neg)

    @torch.no_grad()
    def refresh_gram_teacher(self) -> None:
        """The Gram teacher becomes a copy of the EMA teacher's backbone (shard by shard)."""
        for g, t in zip(self.gram_teacher["backbone"].parameters(),
                        self.teacher["backbone"].parameters(), strict=True):  # fmt: skip
            _local(g).copy_(_local(t))

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student, parameter by parameter.

        Under FSDP both are sharded alike, so each rank updates its local shards.
        """
        teacher = [_local(p) for p in self.teacher.parameters()]
        student = [_local(p) for p in self.student.parameters()]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1 - momentum)


def resize_patch_grid(patches: Tensor, side: int) -> Tensor:
    """(B, n*n, D) patch tokens resized to (B, side*side, D) bicubically."""
    b, n, d = patches.shape
    grid = math.isqrt(n)
    if grid == side:
        return patches
    maps = patches.transpose(1, 2).reshape(b, d, grid, grid)
    maps = F.interpolate(maps.float(), size=(side, side), mode="bicubic")
    return maps.reshape(b, d, side * side).transpose(1, 2).to(patches.dtype)


@torch.no_grad()
def relative_entropy(targets: Tensor) -> Tensor:
    """Mean entropy of the rows of ``targets`` (B, K) as a fraction of log K.

    A diagnostic, not a loss: near 1 the teacher's targets are uniform (the DINO head has
    collapsed to one output for every image and DINO teaches nothing); near 0 every image
    gets one prototype.
    """
    entropy = -(targets * targets.clamp_min(1e-12).log()).sum(dim=-1).mean()
    return entropy / math.log(targets.shape[-1])


def _local(t: Tensor) -> Tensor:
    return t.to_local() if isinstance(t, DTensor) else t
