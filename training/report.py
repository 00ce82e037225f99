"""``RUN/report.html``: one self-contained page about a training run: its loss terms, the
DINO targets' entropy, the schedules, images/s and, when measured, the k-NN curve
(``RUN/knn.jsonl``), with its recipe. Written at the end of every ``train`` call and by
``python -m training.report RUN_DIR``."""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import Any

from manifests.atomic import write_bytes_atomic
from manifests.html_page import line_plot, page, table

KNN_LOG = "knn.jsonl"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []


def _series(metrics: list[dict[str, Any]], keys: list[str]) -> dict[str, list]:
    return {k: [(m["iteration"], m[k]) for m in metrics if k in m]
            for k in keys if any(k in m for m in metrics)}  # fmt: skip


def record_knn(run: Path, accuracy: dict[int, float], image_size: int) -> None:
    """Append a k-NN measurement of the run's current weights to ``RUN/knn.jsonl``."""
    metrics = _lines(run / "metrics.jsonl")
    line = {"iteration": metrics[-1]["iteration"] if metrics else 0, "image_size": image_size,
            **{f"knn_top1_k{k}": round(a, 2) for k, a in accuracy.items()}}  # fmt: skip
    with open(run / KNN_LOG, "a") as f:
        f.write(json.dumps(line) + "\n")


def _summary(metrics: list[dict[str, Any]], config: dict[str, Any]) -> str:
    last = metrics[-1]
    phases = config.get("phases") or []
    rows = [["iterations", f"{last['iteration']:,} of "
             f"{config.get('epochs', 0) * config.get('iters_per_epoch', 0):,}"],
            ["loss (last)", last["loss"]], ["images/s (last)", last["images_per_s"]],
            ["skipped images", last.get("skipped_images", 0)],
            ["phases", html.escape(json.dumps(phases)) if phases else "one"]]  # fmt: skip
    return table(["", ""], rows)


def _knn_table(knn: list[dict[str, Any]], keys: list[str]) -> str:
    if not knn:
        return "<p>No k-NN measured (python -m training.eval.knn --checkpoint RUN records one).</p>"
    rows = [[m["iteration"], m["image_size"], *(m.get(k) for k in keys)] for m in knn]
    return table(["iteration", "image size", *keys], rows)


def _training_plots(metrics: list[dict[str, Any]]) -> str:
    loss_keys = [k for k in metrics[-1] if k.endswith("loss")]
    return "".join([
        line_plot(_series(metrics, loss_keys), "loss terms"),
        line_plot(_series(metrics, ["dino_target_entropy"]),
                  "DINO target entropy (fraction of log K; near 1: collapsed)"),
        line_plot(_series(metrics, ["lr"]), "learning rate", log_y=True),
        line_plot(_series(metrics, ["weight_decay", "momentum", "teacher_temp", "gram_weight"]),
                  "schedules"),
        line_plot(_series(metrics, ["images_per_s"]), "images/s"),
    ])  # fmt: skip


def write_run_report(run: str | Path) -> Path:
    """Write ``run/report.html`` from its metrics and config; returns its path."""
    run = Path(run)
    metrics = _lines(run / "metrics.jsonl")
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    knn = _lines(run / KNN_LOG)
    knn_keys = sorted({k for m in knn for k in m if k.startswith("knn_top1")})
    plots = [_training_plots(metrics) if metrics else "<p>No iteration logged yet.</p>"]
    if knn:
        plots.append(line_plot(_series(knn, knn_keys), "k-NN top-1 (%)"))
    recipe = html.escape(json.dumps(config, indent=1))
    body = ((_summary(metrics, config) if metrics else "") + '<div class="row">'
            + "".join(plots) + "</div>" + _knn_table(knn, knn_keys)
            + f"<h2>Recipe</h2><pre>{recipe}</pre>")  # fmt: skip
    path = run / "report.html"
    write_bytes_atomic(path, page(f"Training run {run}", body).encode())
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.report", description=__doc__)
    p.add_argument("run", type=Path, help="a run directory of training.train")
    args = p.parse_args(argv)
    if not (args.run / "metrics.jsonl").exists():
        print(f"error: {args.run}: no metrics.jsonl (not a run directory)", file=sys.stderr)
        return 2
    print(write_run_report(args.run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
