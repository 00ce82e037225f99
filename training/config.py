"""The training recipe as dataclasses; YAML files in ``configs/train/`` set them."""

from __future__ import annotations

from dataclasses import dataclass, field

from manifests.config import ConfigError, bounded
from training.data.augmentations import MultiCropConfig
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
