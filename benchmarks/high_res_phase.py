"""The high-resolution phase on Fashion-MNIST: one run of the Fashion-MNIST recipe
(``ssl_fashion_mnist.py``'s) trained to its last ``--fraction`` of iterations, then forked
at that checkpoint: one arm finishes at the recipe's crops, the other as a phase at
``--scale`` times the global and local crop sizes (``phases:``), on the same schedule.
Prints JSON: the k-NN top-1 (k = 20) of each arm at the base and at the scaled evaluation
size, and the seconds per iteration of each phase.

    python benchmarks/high_res_phase.py [--iterations 6830 | --minutes 60] [--fraction 0.1]
        [--scale 2] [--workdir DIR] [--quick]

The runs resume: rerunning the command continues (or reuses) each arm's run directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ssl_fashion_mnist import (  # noqa: I001 - benchmarks/ is the script's directory
    RECIPE,
    add_data_arguments,
    calibrated_iterations,
    fashion_mnist,
    knn_top1,
    schedule,
    write_manifest,
)

from manifests.atomic import write_bytes_atomic
from manifests.config import describe, load_config, parse_with_quick
from training.checkpoint import LATEST
from training.config import TrainConfig
from training.train import train

EPOCHS = 10  # schedule()'s "epochs"


def recipe(iterations: int, boundary_epoch: int, extra: list[str]) -> list[str]:
    """The Fashion-MNIST recipe over ``iterations``, checkpointed where the phase starts."""
    per_epoch = max(1, iterations // EPOCHS)
    return RECIPE + extra + schedule(iterations) + [
        f"checkpoint_every={boundary_epoch * per_epoch}"]  # fmt: skip


def fork(base: Path, run: Path, iteration: int) -> None:
    """A new run directory whose only checkpoint is ``base``'s at ``iteration``."""
    if (run / "checkpoints").exists():
        return  # forked before: the run resumes from its own checkpoints
    step = f"step_{iteration:07d}"
    shutil.copytree(base / "checkpoints" / step, run / "checkpoints" / step)
    write_bytes_atomic(run / "checkpoints" / LATEST, step.encode())


def seconds_per_iteration(run: Path, batch: int, start: int, stop: int) -> float:
    """Seconds per iteration over the logged iterations in (``start``, ``stop``] of a run, from
    the last train call that logged there: each line's ``images_per_s`` averages from its
    call's ``since_iteration``, so the difference of two lines excludes the call's start-up."""
    lines = [m for m in map(json.loads, (run / "metrics.jsonl").open())
             if start < m["iteration"] <= stop]  # fmt: skip
    since = lines[-1].get("since_iteration", 0)  # older runs: one call from iteration 0
    first, last = next(m for m in lines if m.get("since_iteration", 0) == since), lines[-1]
    elapsed = lambda m: (m["iteration"] - since) * batch / m["images_per_s"]  # noqa: E731
    if first is last:  # one line: its average, start-up included
        return round(batch / last["images_per_s"], 4)
    return round((elapsed(last) - elapsed(first)) / (last["iteration"] - first["iteration"]), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--iterations", type=int, help="the schedule's length (default: --minutes)")
    p.add_argument("--minutes", type=float, default=60.0, help="calibrate iterations to this")
    p.add_argument("--fraction", type=float, default=0.1, help="the phase's share of iterations")
    p.add_argument("--scale", type=int, default=2, help="the phase's crop sizes over the base")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-bench-phases"))
    add_data_arguments(p)
    args = parse_with_quick(p, {
        "iterations": 20, "train_images": 500, "test_images": 100,
        "workdir": Path("/tmp/lvd-bench-phases-quick"),
        "set": ["data.batch_size=16", "data.num_workers=0", "log_every=2"]})  # fmt: skip
    (train_x, train_y), (test_x, test_y) = fashion_mnist(args.train_images, args.test_images)
    manifests = (write_manifest(train_x, train_y, args.workdir / "train"),
                 write_manifest(test_x, test_y, args.workdir / "test"))  # fmt: skip
    iterations = args.iterations or calibrated_iterations(
        RECIPE + args.set, manifests[0], args.workdir, args.minutes * 60
    )
    boundary_epoch = EPOCHS - max(1, round(args.fraction * EPOCHS))
    base_config = load_config(TrainConfig, None, recipe(iterations, boundary_epoch, args.set))
    size = base_config.crops.global_size
    high = {"global_size": size * args.scale,
            "local_size": base_config.crops.local_size * args.scale}  # fmt: skip
    phase = f"phases=[{{start_epoch: {boundary_epoch}, crops: {json.dumps(high)}}}]"
    high_config = load_config(TrainConfig, None, recipe(iterations, boundary_epoch, args.set)
                              + [phase])  # fmt: skip
    boundary = boundary_epoch * base_config.iters_per_epoch
    total = base_config.total_iterations

    base, high_res = args.workdir / "base", args.workdir / "high_res"
    train(base_config, [str(manifests[0])], base, progress=True)
    fork(base, high_res, boundary)
    train(high_config, [str(manifests[0])], high_res, progress=True)

    batch, first = base_config.data.batch_size, base_config.log_every  # past the start-up
    arms = {}
    for name, run in (("base", base), ("high_res", high_res)):
        arms[name] = {
            f"knn_top1_k20_at_{s}px": round(knn_top1(run, manifests, s), 2)
            for s in (size, size * args.scale)
        }
        arms[name]["s_per_iteration_last_phase"] = seconds_per_iteration(
            run, batch, boundary, total
        )
    result = {
        "iterations": total, "phase_start_iteration": boundary,
        "base_crops": [size, base_config.crops.local_size],
        "phase_crops": [high["global_size"], high["local_size"]],
        "s_per_iteration_first_phase": seconds_per_iteration(base, batch, first, boundary),
        "arms": arms,
        "knn_gain_at_base_size": round(arms["high_res"][f"knn_top1_k20_at_{size}px"]
                                       - arms["base"][f"knn_top1_k20_at_{size}px"], 2),
        "knn_gain_at_scaled_size": round(
            arms["high_res"][f"knn_top1_k20_at_{size * args.scale}px"]
            - arms["base"][f"knn_top1_k20_at_{size * args.scale}px"], 2),
    }  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
