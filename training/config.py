"""The training recipe as dataclasses; YAML files in ``configs/train/`` set them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from manifests.config import ConfigError, bounded, from_dict
from training.data.augmentations import MultiCropConfig
from training.distillation import DistillationConfig
from training.ssl_meta_arch import SSLConfig


@dataclass
class OptimConfig:
    base_lr: float = 4e-3  # per 1024 images; scaled by sqrt(global batch / 1024)
    min_lr: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    layer_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0
    warmup_epochs: int = 10
    freeze_last_layer_epochs: int = 1
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class TeacherConfig:
    momentum: float = 0.992
    final_momentum: float = 1.0
    temp: float = 0.07
    warmup_temp: float = 0.04
    warmup_temp_epochs: int = 30


@dataclass
class MixSource:
    """Manifests whose images fill ``ratio`` of the batches, whole batches of them alone
    (DINOv3 draws 10% of its batches from ImageNet-1k, the rest from LVD-1689M)."""

    manifest: list[str] = field(default_factory=list)
    ratio: float = bounded(0.1, above=0, at_most=1)


@dataclass
class DataConfig:
    batch_size: int = bounded(64, at_least=1)  # per rank
    num_workers: int = bounded(8, at_least=0)
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    # a run stops with an error when more of the images it tried than this could not be read
    max_skipped_fraction: float = bounded(0.5, at_least=0, at_most=1)
    # other sources of whole batches beside --manifest, which fills what their ratios leave
    mix: list[MixSource] = field(default_factory=list)

    def ratios(self) -> list[float]:
        """The share of batches of --manifest, then of each mix source."""
        rest = 1.0 - sum(m.ratio for m in self.mix)
        if rest <= 0:
            raise ConfigError(f"data.mix: ratios sum to {1 - rest:g}; they must leave a share "
                              "(below 1) for --manifest")  # fmt: skip
        for position, source in enumerate(self.mix):
            if not source.manifest:
                raise ConfigError(f"data.mix[{position}].manifest: at least one path is needed")
        return [rest, *(m.ratio for m in self.mix)]


@dataclass
class PhaseConfig:
    """The run's iterations from ``start_epoch`` on, at other crop settings: dinov2's
    high-resolution phase (its released models end at 518 px, the last iterations of
    pretraining). The schedules run on across the boundary; the learned position grid is
    resampled to the phase's global crops (antialiased bicubic, as the _reg models load)."""

    start_epoch: int = bounded(1, at_least=1)
    crops: dict[str, Any] = field(default_factory=dict)  # MultiCropConfig keys to change


@dataclass(frozen=True)
class Segment:
    """Iterations [start, stop) of a run and the crops (and position grid) they train at."""

    start: int
    stop: int
    crops: MultiCropConfig
    img_size: int  # the learned position grid, in pixels


@dataclass
class TrainConfig:
    model: SSLConfig = field(default_factory=SSLConfig)
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = bounded(100, at_least=1)
    # the recipe's "epoch" is a fixed number of iterations
    iters_per_epoch: int = bounded(1250, at_least=1)
    seed: int = 0
    log_every: int = 10
    # iterations; a checkpoint is also written at the end
    checkpoint_every: int = bounded(1250, at_least=1)
    mixed_precision: bool = True  # bfloat16 compute on GPUs (FSDP's policy, or autocast on one)
    time_budget_s: float = 0.0  # stop (with a checkpoint) once this much time has run; 0: none
    # later phases of the run at other crop sizes (the high-resolution phase)
    phases: list[PhaseConfig] = field(default_factory=list)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    # backbone weights a new run starts from (student and teacher): our run directory, a
    # transformers DINOv2 directory, or an official weights file (then init_arch names it)
    init: str = ""
    init_arch: str | None = None

    @property
    def total_iterations(self) -> int:
        return self.epochs * self.iters_per_epoch

    def segments(self) -> list[Segment]:
        """The run's phases as iteration ranges, the first at ``crops``; each later one at
        its own crops and a position grid of its global crops' size (dinov2 builds the ViT
        with ``img_size`` = the global crop size)."""
        bounds = [p.start_epoch for p in self.phases]
        if bounds != sorted(set(bounds)) or (bounds and bounds[-1] >= self.epochs):
            raise ConfigError(f"phases: start_epoch values {bounds} must increase and stay "
                              f"below epochs={self.epochs}")  # fmt: skip
        segments = [Segment(0, self.total_iterations, self.crops, self.model.backbone.img_size)]
        for position, phase in enumerate(self.phases):
            crops = from_dict(MultiCropConfig, {**asdict(self.crops), **phase.crops},
                              f"phases[{position}].crops")  # fmt: skip
            start = phase.start_epoch * self.iters_per_epoch
            segments[-1] = replace(segments[-1], stop=start)
            segments.append(Segment(start, self.total_iterations, crops, crops.global_size))
        patch = self.model.backbone.patch_size
        for s in segments:
            if s.crops.global_size % patch or s.crops.local_size % patch:
                raise ConfigError(f"crops of iterations {s.start}-{s.stop}: global_size "
                                  f"{s.crops.global_size} and local_size {s.crops.local_size} "
                                  f"must be multiples of the patch size {patch}")  # fmt: skip
        return segments
