"""k-NN classification on frozen features, the DINOv2 protocol:
``python -m training.eval.knn --checkpoint RUN_DIR|WEIGHTS.pth --train-manifest PATH
--val-manifest PATH``.

Features are the teacher's L2-normalized CLS tokens of center crops; each validation
image takes the k most similar training images (cosine), whose votes are weighted by
exp(similarity / T), T = 0.07; top-1 accuracy is reported for k in 10, 20, 100, 200.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from manifests.config import ConfigError, describe
from manifests.errors import PATH_ERRORS, ManifestError, error_line
from training.data.dataset import ManifestImageDataset
from training.models import VisionTransformer
from training.models.loading import add_backbone_arguments, is_run_directory, load_backbone
from training.models.preprocess import center_crop_transform
from training.report import record_knn, write_run_report

KS = (10, 20, 100, 200)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    ks: tuple[int, ...] = KS,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> dict[int, float]:
    """Top-1 accuracy (%) of the exp(sim / T)-weighted k-NN vote per k (k capped at the train
    size)."""
    train = F.normalize(train_features.float(), dim=1)
    n_classes = int(max(train_labels.max(), val_labels.max())) + 1
    k_max = min(max(ks), len(train))
    correct = dict.fromkeys(ks, 0)
    for start in range(0, len(val_features), chunk):
        val = F.normalize(val_features[start : start + chunk].float(), dim=1)
        sims, idx = (val @ train.t()).topk(k_max, dim=1)
        weights = (sims / temperature).exp()
        one_hot = F.one_hot(train_labels[idx], n_classes).float()  # (b, k, C)
        truth = val_labels[start : start + chunk]
        for k in ks:
            kk = min(k, k_max)
            votes = (one_hot[:, :kk] * weights[:, :kk, None]).sum(1)
            correct[k] += int((votes.argmax(1) == truth).sum())
    return {k: 100.0 * correct[k] / len(val_features) for k in ks}


@torch.no_grad()
def extract(
    model: VisionTransformer,
    manifest: list[str],
    size: int,
    batch: int,
    workers: int,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``features`` (default: the model's CLS token) of the centre crops of every readable
    image of ``manifest``, and their labels, on the model's device."""
    features = features or model
    device = next(model.parameters()).device
    dataset = ManifestImageDataset.from_manifests(manifest, center_crop_transform(size))
    labels = [row["label"] for row in dataset.rows]
    if any(label is None for label in labels):
        raise ManifestError(f"{manifest}: k-NN needs a 'label' column on every row")
    loader = DataLoader(range(len(dataset)), batch_size=batch, num_workers=workers,
                        collate_fn=lambda idx: [(i, dataset[i]) for i in idx])  # fmt: skip
    rows, kept = [], []
    for items in loader:
        good = [(i, x) for i, x in items if x is not None]
        if good:
            rows.append(features(torch.stack([x for _, x in good]).to(device)))
            kept += [labels[i] for i, _ in good]
    if not rows:
        raise ManifestError(f"{manifest}: none of the {len(dataset)} images could be read (the "
                            "warnings above name them)")  # fmt: skip
    return torch.cat(rows), torch.tensor(kept, dtype=torch.long, device=device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.eval.knn", description=describe(__doc__))
    add_backbone_arguments(p)
    p.add_argument(
        "--train-manifest", required=True, nargs="+", help="labelled manifests: the memory bank"
    )
    p.add_argument(
        "--val-manifest", required=True, nargs="+", help="labelled manifests: the images classified"
    )
    p.add_argument(
        "--image-size", type=int, default=224, help="centre-crop side in pixels (default 224)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="images per forward pass (default 64)"
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader decoding workers (default 2)")
    args = p.parse_args(argv)
    try:
        model = load_backbone(args.checkpoint, args.arch, args.patch_size)
        train = extract(model, args.train_manifest, args.image_size, args.batch_size, args.workers)
        val = extract(model, args.val_manifest, args.image_size, args.batch_size, args.workers)
    except (ConfigError, ManifestError, *PATH_ERRORS) as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    accuracy = knn_accuracy(*train, *val)
    if is_run_directory(args.checkpoint):  # the run's report shows it
        record_knn(args.checkpoint, accuracy, args.image_size)
        write_run_report(args.checkpoint)
    print(json.dumps({"top1": {f"k={k}": round(a, 2) for k, a in accuracy.items()},
                      "train_images": len(train[0]), "val_images": len(val[0])}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
