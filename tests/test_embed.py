"""Embedding: models behind one interface, aligned float16 shards, resume, clear errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch import nn

from builders import jpeg_bytes, path_manifest, skimage_photos
from curation.embed import EmbedConfig, embed_manifests, load_embedder
from manifests.config import ConfigError
from manifests.embeddings import EmbeddingStore
from manifests.errors import ManifestError
from pipelines import embed as cli
from training.models import build_vit

CONFIG = EmbedConfig(rows_per_shard=4, batch_size=3, num_workers=0)


def _pixels(data: bytes) -> torch.Tensor:
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    photos = skimage_photos(96)
    files = {name: jpeg_bytes(photos[name]) for name in ("astronaut", "camera", "coffee", "horse")}
    files["broken"] = b"\xff\xd8 truncated"
    files |= {name: jpeg_bytes(photos[name]) for name in ("moon", "rocket", "coins", "chelsea")}
    return path_manifest(root, "pool", files)


def test_efficientnet_shards_are_aligned_normalized_float16(manifest, tmp_path):
    counts = embed_manifests([manifest], load_embedder("efficientnet_lite0"), tmp_path, CONFIG,
                             progress=False)  # fmt: skip
    assert counts == {"embedded": 8, "failed": 1, "shards_skipped": 0}
    # readable without our code: numpy and pyarrow
    vectors = np.concatenate([np.load(tmp_path / f"0000{i}.npy") for i in range(3)])
    ids = sum((pq.read_table(tmp_path / f"0000{i}.parquet").column("id").to_pylist()
               for i in range(3)), [])  # fmt: skip
    assert vectors.dtype == np.float16 and vectors.shape == (9, 1280)
    assert ids == pq.read_table(manifest).column("id").to_pylist()
    norms = np.linalg.norm(vectors.astype(np.float32), axis=1)
    assert norms[ids.index("broken")] == 0
    np.testing.assert_allclose(np.delete(norms, ids.index("broken")), 1.0, atol=2e-3)
    meta = json.loads((tmp_path / "embed.json").read_text())
    assert meta["model"] == "efficientnet_lite0" and meta["dim"] == 1280
    # pretrained features: a photo re-encoded is far closer to itself than to another one
    photos = skimage_photos(96)
    coffee = jpeg_bytes(photos["coffee"])
    images = [coffee, jpeg_bytes(Image.open(io.BytesIO(coffee)), quality=25),
              jpeg_bytes(photos["camera"])]  # fmt: skip
    embedder = load_embedder("efficientnet_lite0")
    x = torch.stack([embedder.transform(_pixels(data)) for data in images])
    f = torch.nn.functional.normalize(embedder.model(x), dim=1)
    assert f[0] @ f[1] > f[0] @ f[2] + 0.2


def test_resume_redoes_only_missing_shards_and_refuses_another_job(manifest, tmp_path):
    embedder = load_embedder("efficientnet_lite0")
    embed_manifests([manifest], embedder, tmp_path, CONFIG, progress=False)
    first = EmbeddingStore(tmp_path).read()
    (tmp_path / "00001.parquet").unlink()  # as if killed before shard 1 committed
    counts = embed_manifests([manifest], embedder, tmp_path, CONFIG, progress=False)
    assert counts == {"embedded": 8, "failed": 1, "shards_skipped": 2}  # totals of the store
    again = EmbeddingStore(tmp_path).read()
    assert again[0] == first[0] and np.array_equal(again[1], first[1])
    other = EmbedConfig(rows_per_shard=5, batch_size=3, num_workers=0)
    with pytest.raises(ManifestError, match=r"another job \(differs in \['rows_per_shard'\]"):
        embed_manifests([manifest], embedder, tmp_path, other, progress=False)


def test_vit_run_dir_official_weights_and_torchscript(manifest, tmp_path):
    vit = build_vit("vit_small", 14, depth=2, img_size=224)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(vit.state_dict(), run / "teacher_backbone.pth")
    (run / "config.json").write_text(json.dumps({"model": {"arch": "vit_small", "depth": 2},
                                                 "crops": {"global_size": 56}}))  # fmt: skip
    ours = load_embedder(f"vit:{run}")
    assert ours.dim == 384
    image = torch.rand(3, 100, 120)
    assert ours.transform(image).shape == (3, 56, 56)  # the size the run trained on
    expected = vit.eval()(ours.transform(image)[None])
    torch.testing.assert_close(ours.model(ours.transform(image)[None]), expected)

    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1),
                                              nn.Flatten()))  # fmt: skip
    scripted.save(str(tmp_path / "sscd.pt"))
    descriptor = load_embedder(f"torchscript:{tmp_path / 'sscd.pt'}@64")
    assert descriptor.dim == 8 and descriptor.transform(image).shape == (3, 64, 64)
    counts = embed_manifests([manifest], descriptor, tmp_path / "ts", CONFIG, progress=False)
    assert counts["embedded"] == 8


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("vit_small/14:/nowhere/dinov2_vits14.pth", FileNotFoundError,
         "/nowhere/dinov2_vits14.pth: no such file; expected an official DINOv2 vit_small/14"),
        ("torchscript:/nowhere/sscd.pt", FileNotFoundError,
         "/nowhere/sscd.pt: no such file; expected a TorchScript model file"),
        ("resnet50", ConfigError, "unknown model spec 'resnet50'"),
    ],
)  # fmt: skip
def test_bad_specs_fail_clearly(spec, error, message):
    with pytest.raises(error, match=message):
        load_embedder(spec)


def test_cli_embeds_and_reports_errors(manifest, tmp_path, capsys):
    args = ["--manifest", str(manifest), "--out", str(tmp_path), "--workers", "0", "--no-progress"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == 8
    assert cli.main(args + ["--model", "vit_base/14:/nowhere.pth"]) == 2
    assert "/nowhere.pth: no such file" in capsys.readouterr().err


def test_embedding_store_refuses_misaligned_or_missing_shards(tmp_path):
    store = EmbeddingStore(tmp_path)
    with pytest.raises(ManifestError, match="no complete embedding shards"):
        store.read()
    with pytest.raises(ValueError, match="shard 0: 2 ids, 2 flags, 1 rows"):
        store.write(0, ["a", "b"], np.ones(2, bool), np.zeros((1, 4)))
    store.write(0, ["a", "b"], np.ones(2, bool), np.zeros((2, 4)))
    np.save(store.vectors_path(0), np.zeros((3, 4), np.float16))  # a foreign file
    with pytest.raises(ManifestError, match="00000.npy: 3 vectors for 2 ids"):
        store.read()
