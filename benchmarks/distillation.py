"""Distillation on Fashion-MNIST: the same student network (the Fashion-MNIST recipe's
ViT-Ti/7 with ``--student-depth`` blocks) trained for the same iterations from scratch and
distilled from a teacher run (by default one of the recipe's own, trained here first).
Prints JSON: the k-NN top-1 (k = 20) of both students and of the teacher, and each arm's
seconds per iteration.

    python benchmarks/distillation.py --teacher RUN_DIR [--iterations N | --minutes 15]
        [--student-depth 3] [--workdir DIR] [--quick]

``--teacher`` is a run directory of the recipe (e.g. ``high_res_phase.py``'s ``base``,
the 60-minute model); ``--iterations`` defaults to what the scratch student does in
``--minutes`` here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from high_res_phase import seconds_per_iteration  # noqa: I001 - benchmarks/ is its directory
from ssl_fashion_mnist import (
    RECIPE,
    add_data_arguments,
    calibrated_iterations,
    fashion_mnist,
    knn_top1,
    schedule,
    write_manifest,
)

from manifests.config import describe, load_config, parse_with_quick
from training.config import TrainConfig
from training.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--teacher", type=Path, help="the teacher's run directory (default: train "
                   "one of --teacher-iterations here)")  # fmt: skip
    p.add_argument("--teacher-iterations", type=int, default=1700)
    p.add_argument("--iterations", type=int, help="each student's (default: --minutes)")
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--student-depth", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-bench-distill"))
    add_data_arguments(p)
    args = parse_with_quick(p, {
        "teacher_iterations": 10, "iterations": 10, "train_images": 500, "test_images": 100,
        "workdir": Path("/tmp/lvd-bench-distill-quick"),
        "set": ["data.batch_size=16", "data.num_workers=0", "log_every=2"]})  # fmt: skip
    (train_x, train_y), (test_x, test_y) = fashion_mnist(args.train_images, args.test_images)
    manifests = (write_manifest(train_x, train_y, args.workdir / "train"),
                 write_manifest(test_x, test_y, args.workdir / "test"))  # fmt: skip
    data = [str(manifests[0])]
    teacher = args.teacher
    if teacher is None:
        teacher = args.workdir / "teacher"
        config = load_config(TrainConfig, None,
                             RECIPE + args.set + schedule(args.teacher_iterations))  # fmt: skip
        train(config, data, teacher, progress=True)

    student = RECIPE + args.set + [f"model.backbone.depth={args.student_depth}"]
    iterations = args.iterations or calibrated_iterations(
        student, manifests[0], args.workdir, args.minutes * 60
    )
    arms = {
        "scratch": student,
        "distilled": student + ["model.backbone.drop_path_rate=0", "distillation.enabled=true",
                                f"distillation.teacher={teacher}"],
    }  # fmt: skip
    result: dict = {"student_depth": args.student_depth, "iterations": iterations}
    for name, overrides in arms.items():
        config = load_config(TrainConfig, None, overrides + schedule(iterations))
        run = args.workdir / name
        train(config, data, run, progress=True)
        total = config.total_iterations
        result[name] = {
            "knn_top1_k20": round(knn_top1(run, manifests), 2),
            "s_per_iteration": seconds_per_iteration(run, config.data.batch_size,
                                                     config.log_every, total),
        }  # fmt: skip
    result["teacher"] = {
        "run": str(teacher),
        "knn_top1_k20": round(knn_top1(teacher, manifests), 2),
    }
    result["distilled_minus_scratch"] = round(
        result["distilled"]["knn_top1_k20"] - result["scratch"]["knn_top1_k20"], 2
    )
    result["teacher_minus_distilled"] = round(
        result["teacher"]["knn_top1_k20"] - result["distilled"]["knn_top1_k20"], 2
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
