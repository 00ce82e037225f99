"""k-NN evaluation: the weighted vote against a brute-force reference, and the CLI end to end."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.demo.synthetic_images import encode
from training.eval import knn
from training.models import build_vit
from training.models.config import BackboneConfig, build_backbone
from training.models.loading import load_backbone


def _reference(train, train_labels, val, val_labels, k, t=0.07):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    val = val / np.linalg.norm(val, axis=1, keepdims=True)
    hits = 0
    for v, y in zip(val, val_labels, strict=True):
        sims = train @ v
        top = np.argsort(-sims)[:k]
        votes = np.zeros(train_labels.max() + 1)
        for i in top:
            votes[train_labels[i]] += np.exp(sims[i] / t)
        hits += votes.argmax() == y
    return 100.0 * hits / len(val)


def test_weighted_vote_matches_brute_force():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8))
    train_labels = rng.integers(0, 4, 300)
    val_labels = rng.integers(0, 4, 80)
    train = centers[train_labels] + rng.normal(scale=1.2, size=(300, 8))
    val = centers[val_labels] + rng.normal(scale=1.2, size=(80, 8))
    got = knn.knn_accuracy(torch.tensor(train), torch.tensor(train_labels), torch.tensor(val),
                           torch.tensor(val_labels), ks=(1, 10, 20, 500), chunk=17)  # fmt: skip
    for k in (1, 10, 20):
        assert got[k] == pytest.approx(_reference(train, train_labels, val, val_labels, k))
    assert got[500] == pytest.approx(_reference(train, train_labels, val, val_labels, 300))
    assert 40 < got[20] < 100


def _labelled_manifest(root, name, n, seed):
    rng = np.random.default_rng(seed)
    (root / name).mkdir()
    paths, labels = [], []
    for i in range(n):
        label = i % 2
        base = np.array([220, 40, 40]) if label else np.array([40, 40, 220])
        pixels = np.clip(base + rng.normal(0, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
        (root / name / f"{i}.png").write_bytes(encode(pixels, "PNG"))
        paths.append(f"{name}/{i}.png")
        labels.append(label)
    pq.write_table(pa.table({"path": paths, "label": labels}), root / f"{name}.parquet")
    return str(root / f"{name}.parquet")


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    model = build_vit("vit_small", 14, depth=3, img_size=56, init_values=1.0)  # passes content
    torch.save(model.state_dict(), run / "teacher_backbone.pth")
    config = {"model": {"arch": "vit_small", "depth": 3, "img_size": 56}}
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_cli_on_a_run_directory(tmp_path, capsys):
    run = _run_dir(tmp_path)
    train = _labelled_manifest(tmp_path, "train", 24, 0)
    val = _labelled_manifest(tmp_path, "val", 10, 1)
    code = knn.main(["--checkpoint", str(run), "--train-manifest", train, "--val-manifest", val,
                     "--image-size", "56", "--workers", "0"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["train_images"] == 24 and out["val_images"] == 10
    assert out["top1"]["k=10"] == 100.0  # red vs blue images: even random features separate them
    recorded = json.loads((run / "knn.jsonl").read_text())  # for the run's report
    assert recorded["knn_top1_k10"] == 100.0 and recorded["image_size"] == 56
    assert "knn_top1_k10" in (run / "report.html").read_text()


def test_cli_errors_are_clear(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    assert (
        knn.main(["--checkpoint", str(weights), "--train-manifest", "a", "--val-manifest", "b"])
        == 2
    )
    assert "needs an architecture" in capsys.readouterr().err
    assert knn.main(["--checkpoint", str(tmp_path / "missing.pth"), "--arch", "vit_small",
                     "--train-manifest", "a", "--val-manifest", "b"]) == 2  # fmt: skip
    assert "missing.pth: no backbone weights" in capsys.readouterr().err
    assert knn.main(["--checkpoint", str(tmp_path / "missing"), "--train-manifest", "a",
                     "--val-manifest", "b"]) == 2  # fmt: skip
    assert "missing: no backbone weights (no such run directory" in capsys.readouterr().err


def test_cli_with_no_readable_image_fails_in_one_line(tmp_path, capsys):
    run = _run_dir(tmp_path)
    train = _labelled_manifest(tmp_path, "train", 4, 0)
    val = _labelled_manifest(tmp_path, "val", 3, 1)
    for image in (tmp_path / "val").glob("*"):
        image.unlink()
    code = knn.main(["--checkpoint", str(run), "--train-manifest", train, "--val-manifest", val,
                     "--image-size", "56", "--workers", "0"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error: ") and "none of the 3 images could be read" in err


@pytest.mark.parametrize("layerscale,registers", [(0.0, 0), (1e-5, 4)])
def test_a_run_loads_back_as_it_was_trained(tmp_path, layerscale, registers):
    """The backbone is rebuilt from the run's own model config: a run without LayerScale
    (or with registers) has other parameters than the architecture's defaults."""
    backbone = BackboneConfig(depth=2, img_size=28, patch_size=7, layerscale=layerscale,
                              num_register_tokens=registers)  # fmt: skip
    trained = build_backbone(backbone).eval()
    torch.save(trained.state_dict(), tmp_path / "teacher_backbone.pth")
    settings = asdict(backbone)  # nested as runs write it; flat as runs before it wrote it
    model = {"backbone": settings} if registers else {**settings, "packed": True}
    (tmp_path / "config.json").write_text(json.dumps({"model": model}))
    loaded = load_backbone(tmp_path, None, 7)
    x = torch.rand(2, 3, 28, 28)
    assert torch.equal(loaded(x), trained(x))
