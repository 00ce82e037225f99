"""Linear evaluation on frozen features, dinov2's protocols (dinov2/eval/linear.py,
dinov2/eval/log_regression.py):
``python -m training.eval.linear --checkpoint RUN_DIR|WEIGHTS.pth --train-manifest PATH
--val-manifest PATH [--logreg]``.

Linear probe: one linear layer per (learning rate x last 1 or 4 blocks' CLS tokens x with or
without the average-pooled patch tokens of the last block), 13 learning rates (scaled by
batch / 256), SGD with momentum 0.9 and no weight decay, a cosine schedule over 10 x 1250
iterations of batch 128, all trained on the same batches; the one best on a validation
split (10% of the train manifest, held out) is reported on ``--val-manifest``, beside the
best of the grid on ``--val-manifest`` itself (how dinov2 reports ImageNet). Unlike dinov2,
the features are computed once, on centre crops: dinov2 recomputes them on random resized
crops every step, which on a CPU costs the backbone's forward 12,500 times.

Logistic regression (``--logreg``): the final CLS token, L2-regularised multinomial
logistic regression (L-BFGS) over C in 10^linspace(-6, 5, 45) (searched coarse to fine),
C chosen on 10% of the train split, then refit on all of it and reported on
``--val-manifest``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from manifests.config import ConfigError, describe
from manifests.errors import PATH_ERRORS, ManifestError, error_line
from training.eval.knn import extract
from training.models import VisionTransformer
from training.models.loading import add_backbone_arguments, load_backbone

LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
BLOCKS = (1, 4)
LOGREG_C = tuple(float(c) for c in np.logspace(-6, 5, 45))


@dataclass(frozen=True)
class Probe:
    lr: float
    blocks: int
    avgpool: bool

    def name(self) -> str:
        return f"blocks{self.blocks}_avgpool{int(self.avgpool)}_lr{self.lr:g}"


def probe_features(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Per image: the CLS tokens of the last 4 blocks, then the last block's average
    patch token, concatenated (B, 5 * D); :func:`probe_input` takes what a probe uses."""
    layers = model.get_intermediate_layers(images, n=max(BLOCKS))
    return torch.cat([cls for _, cls in layers] + [layers[-1][0].mean(dim=1)], dim=-1)


def probe_input(features: torch.Tensor, blocks: int, avgpool: bool) -> torch.Tensor:
    """dinov2's ``create_linear_input``: the last ``blocks`` CLS tokens [+ the pooled patches]."""
    d = features.shape[1] // (max(BLOCKS) + 1)
    cls = features[:, (max(BLOCKS) - blocks) * d : max(BLOCKS) * d]
    return torch.cat([cls, features[:, -d:]], dim=1) if avgpool else cls


def held_out(n: int, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) row indices: a seeded ``fraction`` of ``n`` held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(round(n * fraction)))
    return order[cut:], order[:cut]


def train_probes(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    iterations: int = 12_500,
    batch: int = 128,
    seed: int = 0,
) -> dict[Probe, torch.nn.Linear]:
    """Every probe of the grid trained on the same shuffled batches of (x, y): one backward
    of their summed (independent) losses and one SGD step over a parameter group per probe
    per iteration."""
    torch.manual_seed(seed)
    inputs = [(b, a) for b in BLOCKS for a in (False, True)]
    probes: dict[Probe, torch.nn.Linear] = {}
    for blocks, avgpool in inputs:
        width = probe_input(x[:1], blocks, avgpool).shape[1]
        for lr in LEARNING_RATES:
            layer = torch.nn.Linear(width, n_classes).to(x.device)
            torch.nn.init.normal_(layer.weight, std=0.01)  # dinov2's LinearClassifier init
            torch.nn.init.zeros_(layer.bias)
            probes[Probe(lr, blocks, avgpool)] = layer
    groups = [{"params": list(layer.parameters()), "lr": p.lr * batch / 256}
              for p, layer in probes.items()]  # fmt: skip
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations, eta_min=0)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(iterations), desc="linear probes", mininterval=5):
        rows = torch.randint(len(x), (batch,), generator=g).to(x.device)
        loss = torch.zeros((), device=x.device)
        for blocks, avgpool in inputs:
            layers = [
                layer for p, layer in probes.items() if (p.blocks, p.avgpool) == (blocks, avgpool)
            ]
            weight = torch.stack([layer.weight for layer in layers])  # (L, K, in)
            bias = torch.stack([layer.bias for layer in layers])
            logits = torch.einsum("bi,lki->lbk", probe_input(x[rows], blocks, avgpool), weight)
            logits = logits + bias[:, None]
            targets = y[rows].expand(len(layers), -1)
            loss = loss + F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        (loss / batch).backward()  # each probe's gradient: its own mean cross-entropy's
        optimizer.step()
        schedule.step()
    return probes


@torch.no_grad()
def accuracy(layer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((layer(x).argmax(1) == y).float().mean())


def linear_eval(train: tuple, test: tuple, iterations: int = 12_500, batch: int = 128,
                val_fraction: float = 0.1) -> dict:  # fmt: skip
    """dinov2's linear protocol on extracted (probe_features, labels) pairs."""
    (x, y), (xt, yt) = train, test
    n_classes = int(max(y.max(), yt.max())) + 1
    fit, val = held_out(len(x), val_fraction)
    probes = train_probes(x[fit], y[fit], n_classes, iterations, batch)
    grid = []
    for p, layer in probes.items():
        grid.append({"probe": p.name(), "lr": p.lr, "blocks": p.blocks, "avgpool": p.avgpool,
                     "val_accuracy": round(accuracy(layer, probe_input(x[val], p.blocks,
                                                                         p.avgpool), y[val]), 2),
                     "test_accuracy": round(accuracy(layer, probe_input(xt, p.blocks, p.avgpool),
                                                     yt), 2)})  # fmt: skip
    chosen = max(grid, key=lambda r: r["val_accuracy"])
    return {"selected_on_validation": chosen,
            "best_on_test": max(grid, key=lambda r: r["test_accuracy"]),
            "iterations": iterations, "batch": batch, "grid": grid}  # fmt: skip


def fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float,
               start: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Weights (D + 1, K) minimising ``C * sum_i CE_i + ||W||^2 / 2`` (scikit-learn's
    objective; the bias unpenalised), by L-BFGS, from ``start`` when given."""
    xb = torch.cat([x, torch.ones(len(x), 1, device=x.device, dtype=x.dtype)], dim=1)
    w = (
        start.clone()
        if start is not None
        else torch.zeros(xb.shape[1], n_classes, device=x.device, dtype=x.dtype)
    )
    w.requires_grad_(True)
    optimizer = torch.optim.LBFGS([w], lr=1, max_iter=1000, tolerance_grad=1e-6,
                                  tolerance_change=1e-10, history_size=20,
                                  line_search_fn="strong_wolfe")  # fmt: skip

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(xb @ w, y, reduction="mean") + (w[:-1] ** 2).sum() / (2 * c * len(x))
        loss.backward()
        return loss

    optimizer.step(objective)
    return w.detach()


def logreg_predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x @ w[:-1] + w[-1]).argmax(1)


def logreg_eval(train: tuple, test: tuple, val_fraction: float = 0.1, stride: int = 4) -> dict:
    """dinov2's log_regression: C from the 45-value grid on a held-out 10% of train, refit on
    all of train, accuracy on test. Features: the final CLS token. The grid is searched
    coarse to fine (every ``stride``-th C, then the neighbours of the best; ``stride=1``:
    all 45): large C need many L-BFGS iterations, and validation accuracy is unimodal in C."""
    (x, y), (xt, yt) = train, test
    x, xt = x.double(), xt.double()
    n_classes = int(max(y.max(), yt.max())) + 1
    fit, val = held_out(len(x), val_fraction)
    scores: dict[int, float] = {}
    weights: dict[int, torch.Tensor] = {}

    def score(i: int) -> None:
        nearest = min(weights, key=lambda j: abs(j - i), default=None)  # warm start
        weights[i] = fit_logreg(x[fit], y[fit], n_classes, LOGREG_C[i],
                                start=None if nearest is None else weights[nearest])  # fmt: skip
        scores[i] = 100.0 * float((logreg_predict(weights[i], x[val]) == y[val]).double().mean())

    coarse = sorted({*range(0, len(LOGREG_C), stride), len(LOGREG_C) - 1})
    for i in tqdm(coarse, desc="logistic regression C (coarse)", mininterval=5):
        score(i)
    best = max(scores, key=scores.get)
    for i in range(max(0, best - stride + 1), min(len(LOGREG_C), best + stride)):
        if i not in scores:
            score(i)
    best = max(scores, key=scores.get)
    w = fit_logreg(x, y, n_classes, LOGREG_C[best], start=weights[best])
    test_accuracy = 100.0 * float((logreg_predict(w, xt) == yt).double().mean())
    return {"C": LOGREG_C[best], "val_accuracy": round(scores[best], 2),
            "test_accuracy": round(test_accuracy, 2), "C_values_fitted": len(scores)}  # fmt: skip


def final_cls(features: torch.Tensor) -> torch.Tensor:
    """The last block's CLS token out of :func:`probe_features`."""
    return probe_input(features, 1, False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.eval.linear",
                                description=describe(__doc__))  # fmt: skip
    add_backbone_arguments(p)
    p.add_argument("--train-manifest", required=True, nargs="+", help="labelled manifests")
    p.add_argument("--val-manifest", required=True, nargs="+", help="labelled manifests reported")
    p.add_argument("--image-size", type=int, default=224, help="centre-crop side in pixels")
    p.add_argument("--iterations", type=int, default=12_500, help="probe iterations (12,500)")
    p.add_argument("--batch-size", type=int, default=128, help="probe batch (128)")
    p.add_argument("--logreg", action="store_true", help="also dinov2's logistic regression")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=2, help="DataLoader decoding workers")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    try:
        model = load_backbone(args.checkpoint, args.arch, args.patch_size).to(args.device)
        features = lambda images: probe_features(model, images)  # noqa: E731
        train, test = (extract(model, m, args.image_size, 256, args.workers, features)
                       for m in (args.train_manifest, args.val_manifest))  # fmt: skip
    except (ConfigError, ManifestError, *PATH_ERRORS) as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    result = {"linear": linear_eval(train, test, args.iterations, args.batch_size),
              "train_images": len(train[0]), "val_images": len(test[0])}  # fmt: skip
    if args.logreg:
        result["logreg"] = logreg_eval((final_cls(train[0]), train[1]),
                                       (final_cls(test[0]), test[1]))  # fmt: skip
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
