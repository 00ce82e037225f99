"""One DINOv2 training step of ViT-S/14 (2 x 224 + 8 x 98 crops, batch 8): packed vs one
forward per crop size, efficient vs standard stochastic depth (rate 0.4), in one run.

Each variant runs in its own process (so its peak resident memory is its own) on the same
data and weights; times are the median of the timed steps. Prints JSON; the ratios
against the plain path (unpacked, standard drop path) are what to compare.

    python benchmarks/train_step.py [--steps 3] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time

import torch

from manifests.allocator import keep_large_allocations
from manifests.config import describe, parse_with_quick
from training.models.config import BackboneConfig
from training.ssl_meta_arch import SSLConfig, SSLMetaArch
from training.train import STEP_BUFFERS

VARIANTS = {
    "plain": {"packed": False, "efficient_drop_path": False},
    "packed": {"packed": True, "efficient_drop_path": False},
    "efficient_drop_path": {"packed": False, "efficient_drop_path": True},
    "packed+efficient": {"packed": True, "efficient_drop_path": True},
}


def _batch(batch: int, n_local: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "global_crops": torch.randn(2 * batch, 3, 224, 224, generator=g).to(device),
        "local_crops": torch.randn(n_local * batch, 3, 98, 98, generator=g).to(device),
        "masks": (torch.rand(2 * batch, 256, generator=g) < 0.3).to(device),
    }


def run_variant(name: str, steps: int, batch: int, n_local: int, device: str, out) -> None:
    keep_large_allocations(up_to=STEP_BUFFERS, trim_above=STEP_BUFFERS)  # as training.train does
    torch.manual_seed(0)
    packed, efficient = VARIANTS[name]["packed"], VARIANTS[name]["efficient_drop_path"]
    backbone = BackboneConfig(arch="vit_small", drop_path_rate=0.4, efficient_drop_path=efficient)
    config = SSLConfig(backbone=backbone, ibot_separate_head=False, packed=packed)
    model = SSLMetaArch(config).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.student.parameters()], lr=1e-4)
    data = _batch(batch, n_local, device)
    times = []
    for step in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(data, teacher_temp=0.04)["loss"].backward()
        optimizer.step()
        model.update_teacher(0.994)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    out[name] = {"step_s": round(statistics.median(times), 3), "peak_mib": round(peak, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--local-crops", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parse_with_quick(p, {"steps": 1, "batch": 1, "local_crops": 2})
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Manager().dict()
    for name in VARIANTS:
        proc = ctx.Process(
            target=run_variant,
            args=(name, args.steps, args.batch, args.local_crops, args.device, results),
        )
        proc.start()
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"variant {name} failed with exit code {proc.exitcode}")
    out = {"device": args.device, "batch": args.batch, "local_crops": args.local_crops,
           "threads": torch.get_num_threads(),
           "steps": args.steps, "peak_memory": "GPU max allocated" if args.device == "cuda"
           else "process max RSS", **dict(results)}  # fmt: skip
    plain = out["plain"]["step_s"]
    out["speedup_vs_plain"] = {n: round(plain / out[n]["step_s"], 3) for n in VARIANTS}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
