"""Train DINOv2 from a manifest: ``python -m training.train --config CONFIG --manifest PATH
--output-dir DIR [--set key=value ...]`` (a bare ``key=value`` is the same as ``--set``).

A plain loop: schedules looked up per iteration, one student/teacher step, gradient
clipping, AdamW, EMA teacher update, JSON-lines metrics, DCP checkpoints. Rerunning the
same command resumes from the latest complete checkpoint and continues the loss curve
exactly. A non-finite loss stops the run with a message naming the iteration and the
loss terms; the last checkpoint stays as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from manifests.allocator import keep_large_allocations
from manifests.atomic import write_bytes_atomic
from manifests.config import (
    ConfigError,
    add_config_arguments,
    config_from_arguments,
    configure_logging,
    describe,
)
from manifests.errors import PATH_ERRORS, ManifestError, error_line
from manifests.image_rows import require_image_rows
from manifests.job import claim_directory, read_claim
from training.checkpoint import (
    checkpoint_iteration,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from training.config import TrainConfig
from training.data.augmentations import MultiCropAugmentation, MultiCropConfig
from training.data.collate import MultiCropCollate
from training.data.dataset import ManifestImageDataset
from training.data.stream import MixedBatchSampler, StreamBatchSampler
from training.distillation import load_teacher
from training.distributed import Dist, init_distributed, shard, shard_networks
from training.metrics_log import MetricsLog
from training.models.loading import load_backbone
from training.report import write_run_report
from training.schedules import (
    cosine_schedule,
    linear_warmup_then_constant,
    param_groups,
    scaled_lr,
)
from training.ssl_meta_arch import SSLMetaArch

log = logging.getLogger(__name__)
# a step's activations and gradients (a ViT-S head's weight alone is 67 MB): kept by glibc
# for the next step instead of unmapped and page-faulted again (manifests/allocator.py)
STEP_BUFFERS = 1 << 30


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training cannot continue from this state."""


class UnreadableDataError(ManifestError):
    """Too few of the images the run tried could be read: it would train on nothing."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM: the run saved a checkpoint and stopped."""

    def __init__(self, signum: int, iteration: int, out: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} at iteration {iteration}: checkpoint saved in "
                         f"{out / 'checkpoints'}; rerun the same command to resume")  # fmt: skip
        self.signum = signum


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], int | None]]:
    """While in the block, SIGINT and SIGTERM ask the loop to stop after the current step
    (a second SIGINT stops at once); yields a function giving the signal received, if any.
    Off the main thread (where Python delivers signals) nothing is installed."""
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        log.warning("%s: stopping after this step (Ctrl-C again to stop at once)",
                    signal.Signals(signum).name)  # fmt: skip

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def claim_run_directory(out: Path, config: TrainConfig) -> None:
    """Record the run's config in ``out/config.json``. A run directory resumes only its own
    run: model and crops must be unchanged (other keys, such as the schedule length or the
    time budget, may change on resume). A setting added to the trainer after the run was
    written counts as its default there."""
    has_checkpoint = latest_checkpoint(out / "checkpoints") is not None
    found = read_claim(out, "config.json")
    if found is not None:
        backfilled = _with_defaults(found, asdict(TrainConfig()))
        write_bytes_atomic(out / "config.json", json.dumps(backfilled).encode())
    claim_directory(out, "config.json", asdict(config), has_checkpoint,
                    identity=("model", "crops"))  # fmt: skip


def _with_defaults(found: dict, defaults: dict) -> dict:
    """``found`` with the keys it lacks taken from ``defaults``, nested mappings alike."""
    merged = dict(found)
    for key, value in defaults.items():
        if key not in found:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(found[key], dict):
            merged[key] = _with_defaults(found[key], value)
    return merged


@dataclass
class Schedules:
    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    gram_weight: np.ndarray  # 0 before Gram anchoring starts (and throughout when it is off)
    freeze_last_layer_iters: int
    warmup_iters: int

    @classmethod
    def build(cls, config: TrainConfig, global_batch: int) -> Schedules:
        total, per_epoch = config.epochs * config.iters_per_epoch, config.iters_per_epoch
        o, t, g = config.optim, config.teacher, config.model.gram
        warmup = o.warmup_epochs * per_epoch
        return cls(
            lr=cosine_schedule(scaled_lr(o.base_lr, global_batch), o.min_lr, total,
                               warmup_iters=warmup),
            weight_decay=cosine_schedule(o.weight_decay, o.weight_decay_end, total),
            momentum=cosine_schedule(t.momentum, t.final_momentum, total),
            teacher_temp=linear_warmup_then_constant(t.warmup_temp, t.temp,
                                                     t.warmup_temp_epochs * per_epoch, total),
            gram_weight=np.where(np.arange(total) >= g.start_iteration, g.weight, 0.0),
            freeze_last_layer_iters=o.freeze_last_layer_epochs * per_epoch,
            warmup_iters=warmup,
        )  # fmt: skip

    def at(self, it: int) -> dict[str, float]:
        values = {
            "lr": float(self.lr[it]),
            "weight_decay": float(self.weight_decay[it]),
            "momentum": float(self.momentum[it]),
            "teacher_temp": float(self.teacher_temp[it]),
        }
        if self.gram_weight.any():
            values["gram_weight"] = float(self.gram_weight[it])
        return values

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> None:
        for group in optimizer.param_groups:
            frozen = group["is_last_layer"] and it < self.freeze_last_layer_iters
            group["lr"] = 0.0 if frozen else self.lr[it] * group["lr_multiplier"]
            group["weight_decay"] = self.weight_decay[it] * group["wd_multiplier"]


def build_loader(
    config: TrainConfig,
    manifests: list[str],
    start_batch: int = 0,
    rank: int = 0,
    world: int = 1,
    crops: MultiCropConfig | None = None,
) -> DataLoader:
    """Batches from ``start_batch`` on, at ``crops`` (default: the recipe's); each batch is
    a function of its index (exact resume)."""
    crops = crops or config.crops
    augmentation = MultiCropAugmentation(crops)
    sources = [manifests, *(m.manifest for m in config.data.mix)]
    parts = [require_image_rows(paths) for paths in sources]
    dataset = ManifestImageDataset([row for part in parts for row in part], augmentation.geometric)
    grid = crops.global_size // config.model.backbone.patch_size
    collate = MultiCropCollate(
        (grid, grid), config.data.mask_probability, config.data.mask_ratio,
        photometric=augmentation.photometric,
    )  # fmt: skip
    batch = config.data.batch_size
    if config.data.mix:
        sampler = MixedBatchSampler([len(p) for p in parts], config.data.ratios(), batch,
                                    config.seed, rank, world, start_batch)  # fmt: skip
    else:
        sampler = StreamBatchSampler(len(dataset), batch, config.seed, rank, world, start_batch)
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=config.data.num_workers, collate_fn=collate,
        persistent_workers=config.data.num_workers > 0,
    )  # fmt: skip


def clip_gradients(model: SSLMetaArch, max_norm: float) -> dict[str, torch.Tensor]:
    """Clip the backbone's, the DINO head's and the iBOT head's gradients each to
    ``max_norm``, as dinov2 does; returns each part's norm before clipping."""
    return {name: torch.nn.utils.clip_grad_norm_(part.parameters(), max_norm)
            for name, part in model.student.items()}  # fmt: skip


def compute_dtype(config: TrainConfig, d: Dist) -> torch.dtype | None:
    """bfloat16 autocast on one GPU, as FSDP's mixed precision gives several (it casts the
    weights itself); float32 on CPU and without ``mixed_precision``."""
    single_gpu = d.device.type == "cuda" and d.world_size == 1
    return torch.bfloat16 if config.mixed_precision and single_gpu else None


def train_step(
    model: SSLMetaArch,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    schedules: Schedules,
    it: int,
    clip_grad: float,
    compute_dtype: torch.dtype | None = None,
    distill_from: torch.nn.ModuleDict | None = None,
) -> dict[str, torch.Tensor]:
    """One iteration: schedules, losses, backward, clipping, AdamW, EMA teacher. With a
    ``compute_dtype``, the forward pass runs under autocast to it (weights stay float32);
    with ``distill_from``, that frozen teacher gives the targets."""
    schedules.apply(optimizer, it)
    device = batch["global_crops"].device.type
    with torch.autocast(device, dtype=compute_dtype, enabled=compute_dtype is not None):
        terms = model(batch, float(schedules.teacher_temp[it]), distill_from,
                      float(schedules.gram_weight[it]))  # fmt: skip
    _check_finite(terms, it)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    clip_gradients(model, clip_grad)
    optimizer.step()
    model.update_teacher(float(schedules.momentum[it]))
    return terms


def build_model(
    config: TrainConfig, d: Dist, img_size: int | None = None, initial: bool = False
) -> tuple[SSLMetaArch, torch.optim.Optimizer]:
    """Student, teacher and AdamW; ``img_size`` sets the position grid (default: the
    recipe's ``model.backbone.img_size``); ``initial``: a new run, whose backbones start
    from ``config.init`` when it names weights."""
    torch.manual_seed(config.seed)
    model_config = config.model
    if img_size is not None:
        backbone = replace(model_config.backbone, img_size=img_size)
        model_config = replace(model_config, backbone=backbone)
    model = SSLMetaArch(model_config).to(d.device).train()
    if initial and config.init:
        model.start_from(load_backbone(Path(config.init), config.init_arch,
                                       config.model.backbone.patch_size))  # fmt: skip
        log.info("the backbones start from %s", config.init)
    if config.distillation.enabled:  # the student never sees a mask token: nothing to train
        model.student["backbone"].mask_token.requires_grad_(False)
    if d.world_size > 1:
        shard(model, mixed_precision=config.mixed_precision and d.device.type == "cuda")
    depth = len(model.student["backbone"].blocks)
    o = config.optim
    groups = param_groups(model.student, depth, o.layer_decay, o.patch_embed_lr_mult)
    return model, torch.optim.AdamW(groups, betas=o.betas)


def train(
    config: TrainConfig, manifests: list[str], output_dir: str | Path, progress: bool = True
) -> dict:
    """Run the whole schedule (resuming if a checkpoint exists); returns the last metrics."""
    _refuse_build_directories([*manifests, *(p for m in config.data.mix for p in m.manifest)])
    keep_large_allocations(up_to=STEP_BUFFERS, trim_above=STEP_BUFFERS)
    d = init_distributed()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    claim_run_directory(out, config)
    schedules = Schedules.build(config, global_batch=config.data.batch_size * d.world_size)
    checkpoints = out / "checkpoints"
    found = latest_checkpoint(checkpoints)
    start, started = checkpoint_iteration(found) if found else 0, time.perf_counter()
    segments, metrics = config.segments(), {}
    distill_from = distillation_teacher(config, d)
    for segment in segments:  # a phase's first step loads the phase before's checkpoint
        if start >= segment.stop and segment is not segments[-1]:
            continue
        model, optimizer = build_model(config, d, segment.img_size, initial=not found)
        if found:
            start = load_checkpoint(found, model, optimizer)
            log.info("resuming from %s at iteration %d", found, start)
        if start >= segment.stop:  # a finished run: its weights are written again
            break
        loader = build_loader(config, manifests, start, d.rank, d.world_size, segment.crops)
        metrics, finished = _run(config, model, optimizer, schedules, iter(loader),
                                 range(start, segment.stop), out, d, progress, started,
                                 distill_from)  # fmt: skip
        del loader  # its workers
        if not finished:
            break
        found, start = latest_checkpoint(checkpoints), segment.stop
    weights = get_model_state_dict(
        model.teacher["backbone"], options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if d.is_main:
        torch.save(weights, out / "teacher_backbone.pth")
        write_run_report(out)
    return metrics


def distillation_teacher(config: TrainConfig, d: Dist) -> torch.nn.ModuleDict | None:
    """The frozen teacher of a distillation run (sharded like the student on several
    ranks), or None."""
    if not config.distillation.enabled:
        return None
    if config.model.backbone.drop_path_rate > 0:
        log.warning("distillation with model.backbone.drop_path_rate=%g: the paper's recipe "
                    "trains the student without stochastic depth",
                    config.model.backbone.drop_path_rate)  # fmt: skip
    teacher = load_teacher(config.distillation, config.model, d.device)
    if d.world_size > 1:
        shard_networks(teacher, mixed_precision=config.mixed_precision and d.device.type == "cuda")
    return teacher


def _refuse_build_directories(manifests: list[str]) -> None:
    """A build_lvd directory holds every stage's Parquet files (the crawl's whole pool among
    them): training on it would not train on the curated set."""
    for m in manifests:
        lvd = Path(m) / "retrieve" / "lvd"
        if lvd.is_dir():
            raise ConfigError(f"{m} is a build_lvd directory, not a manifest; its curated set "
                              f"is --manifest {lvd}")  # fmt: skip


def seed_step(seed: int, it: int, rank: int) -> None:
    """Seed this process's RNG (stochastic depth) from the run's seed, the iteration and the
    rank: a resumed run draws what an uninterrupted one drew at every iteration, whatever
    the DataLoader (its workers, its iterator's start) did to this process's RNG."""
    torch.manual_seed((seed * 1_000_003 + it) * 65_536 + rank)


def _check_readable(config: TrainConfig, read: int, skipped: int, finished: bool) -> None:
    """Stop a run that is training on too few images (``data.max_skipped_fraction``)."""
    tried = read + skipped
    too_many = tried >= 2 * config.data.batch_size and \
        skipped > config.data.max_skipped_fraction * tried  # fmt: skip
    if too_many or (finished and read == 0):
        raise UnreadableDataError(
            f"{skipped} of the {tried} images tried could not be read (more than "
            f"data.max_skipped_fraction={config.data.max_skipped_fraction}); the warnings "
            "above name them: check that the manifest's paths exist here"
        )


def _run(
    config,
    model,
    optimizer,
    schedules,
    batches,
    iterations,
    out,
    d,
    progress,
    started,
    distill_from,
) -> tuple[dict, bool]:
    """Iterations ``iterations`` (a checkpoint after the last); the last metrics, and
    whether they all ran (not stopped by the time budget)."""
    metrics: dict = {}
    skipped, seen, read, segment_started = 0, 0, 0, time.perf_counter()
    warned = out_of_time = False
    total = iterations.stop
    gram_refreshes = config.model.gram.refreshes() if config.model.gram.enabled else set()
    bar = tqdm(total=total, initial=iterations.start, disable=not (progress and d.is_main),
               desc="train")  # fmt: skip
    with (
        MetricsLog(out, d.rank) as log_metrics,
        bar,
        stop_requests() as stop_signal,
    ):
        for it in iterations:
            batch = next(batches)
            skipped += batch["skipped"]
            read += batch["size"]
            _check_readable(config, read, skipped, finished=False)
            if not batch["size"]:
                continue
            batch = {k: v.to(d.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            seed_step(config.seed, it, d.rank)
            if it in gram_refreshes:
                model.refresh_gram_teacher()
            terms = train_step(model, optimizer, batch, schedules, it, config.optim.clip_grad,
                               compute_dtype(config, d), distill_from)  # fmt: skip
            seen += batch["size"] * d.world_size
            bar.update(1)
            out_of_time = _budget_spent(config, started)
            if (it + 1) % config.log_every == 0 or it + 1 == total or out_of_time:
                metrics = {
                    "iteration": it + 1,
                    **{k: round(float(v.detach()), 5) for k, v in terms.items()},
                    **schedules.at(it),
                    "images_per_s": round(seen / (time.perf_counter() - segment_started), 2),
                    "since_iteration": iterations.start,  # images_per_s averages from here
                    "skipped_images": skipped,
                }
                log_metrics.write(metrics)
                warned = warned or (d.is_main and _warn_if_collapsed(metrics, schedules))
                bar.set_postfix(loss=metrics["loss"], img_s=metrics["images_per_s"])
            signum = _any_rank(stop_signal())
            if (it + 1) % config.checkpoint_every == 0 or it + 1 == total or out_of_time \
                    or signum:  # fmt: skip
                save_checkpoint(out / "checkpoints", model, optimizer, it + 1)
            if signum:
                raise TrainingInterrupted(signum, it + 1, out)
            if out_of_time:
                log.info("time budget of %.0fs spent at iteration %d", config.time_budget_s, it + 1)
                break
    _check_readable(config, read, skipped, finished=True)
    return metrics, not out_of_time


UNIFORM_TARGETS = 0.98  # teacher target entropy, as a fraction of log K, that means collapse


def _warn_if_collapsed(metrics: dict, schedules: Schedules) -> bool:
    """Warn (and return True) when, past the lr warmup, the teacher's DINO targets are near
    uniform: the head gives every image the same output, and DINO teaches the CLS token
    nothing while the loss sits at log K. Short schedules reach this state easily."""
    entropy = metrics["dino_target_entropy"]
    if metrics["iteration"] <= schedules.warmup_iters or entropy < UNIFORM_TARGETS:
        return False
    log.warning(
        "iteration %d: DINO targets are near uniform (entropy %.3f of log K): the DINO head "
        "has collapsed and the CLS token learns nothing from DINO. The settings that bear on "
        "it: model.backbone.layerscale (its 1e-5 makes every image's CLS token nearly the "
        "same at init; 0 disables it), the teacher temperature (teacher.warmup_temp, "
        "teacher.temp; lower sharpens), model.head_prototypes and the length of the warmup; "
        "the Fashion-MNIST recipe needed both layerscale=0 and teacher.temp=0.04",
        metrics["iteration"], entropy,
    )  # fmt: skip
    return True


def _budget_spent(config: TrainConfig, started: float) -> bool:
    """Whether the time budget is spent, as rank 0 sees it (all ranks stop together)."""
    spent = torch.tensor(
        float(config.time_budget_s > 0 and time.perf_counter() - started > config.time_budget_s)
    )
    if dist.is_initialized():
        dist.broadcast(spent, src=0)
    return bool(spent)


def _any_rank(signum: int | None) -> int:
    """The signal some rank received (0: none), the same on every rank."""
    value = torch.tensor(signum or 0)
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value)


def _check_finite(terms: dict[str, torch.Tensor], it: int) -> None:
    loss = terms["loss"].detach().clone()
    if dist.is_initialized():  # every rank must stop together
        dist.all_reduce(loss)
    loss = float(loss)
    if not math.isfinite(loss):
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        raise NonFiniteLossError(f"iteration {it}: loss is {loss} ({detail}); stopping")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=describe(__doc__))
    add_config_arguments(p, "a training recipe (configs/train/)", required=True,
                         shorthands={"init": "init"})  # fmt: skip
    p.add_argument(
        "--manifest",
        required=True,
        nargs="+",
        metavar="PATH",
        help="image manifests to train on, e.g. a build's DIR/retrieve/lvd",
    )
    p.add_argument(
        "--output-dir",
        required=True,
        metavar="DIR",
        help="the run directory: checkpoints, metrics.jsonl, weights (a rerun resumes it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("positional_overrides", nargs="*", metavar="KEY=VALUE",
                   help="the same as --set KEY=VALUE")  # fmt: skip
    args = p.parse_args(argv)
    configure_logging(logging.INFO)
    try:
        config = config_from_arguments(TrainConfig, args, args.positional_overrides)
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            metrics = train(config, args.manifest, args.output_dir, progress=not args.no_progress)
    except (ConfigError, ManifestError, NonFiniteLossError, *PATH_ERRORS) as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 128 + exc.signum
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
