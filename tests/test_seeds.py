"""Seed-set adapters on miniature copies of the real layouts, and the seeds CLI."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.seeds.adapters import ADAPTERS
from curation.seeds.registry import SeedSetsConfig, resolve
from manifests.config import ConfigError
from manifests.errors import ManifestError
from pipelines import seeds as cli
from pipelines.demo.synthetic_images import encode, make_photo
from training.data.dataset import ManifestImageDataset


def _jpeg(seed: int) -> bytes:
    return encode(make_photo(seed, 40, 30))


def _write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_imagenet22k_folders_and_release_tars(tmp_path):
    _write(tmp_path / "n001" / "n001_7.JPEG", _jpeg(1))
    _tar(tmp_path / "n002.tar", {"n002_1.JPEG": _jpeg(2), "n002_2.JPEG": _jpeg(3)})
    rows = ADAPTERS["imagenet22k"].rows("in22k", tmp_path)
    assert [(r["id"], r["label"], r["key"]) for r in rows] == [
        ("in22k:n001/n001_7.JPEG", 0, None), ("in22k:n002/n002_1", 1, "n002_1"),
        ("in22k:n002/n002_2", 1, "n002_2")]  # fmt: skip
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    dataset = ManifestImageDataset.from_manifests([manifest])
    assert all(dataset[i].shape == (3, 30, 40) for i in range(3))  # .JPEG inside tars too


def test_imagenet1k_train_and_val_with_its_label_file(tmp_path):
    _write(tmp_path / "train" / "n01" / "a.JPEG", _jpeg(1))
    _write(tmp_path / "train" / "n02" / "b.JPEG", _jpeg(2))
    _write(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", _jpeg(3))
    _write(tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG", _jpeg(4))
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n02 1 2 3 4\n"
        "ILSVRC2012_val_00000002,n01 5 6 7 8 n01 1 1 2 2\n")  # fmt: skip
    train = ADAPTERS["imagenet1k"].rows("in1k", tmp_path)
    assert [(r["id"], r["label"]) for r in train] == [
        ("in1k:n01/a.JPEG", 0),
        ("in1k:n02/b.JPEG", 1),
    ]
    val = ADAPTERS["imagenet1k_val"].rows("val", tmp_path)
    assert [r["label"] for r in val] == [1, 0]


def test_gldv2_clean_csv_and_a_missing_listed_image(tmp_path):
    for image_id in ("abc123", "f00d42"):
        _write(tmp_path / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg",
               _jpeg(len(image_id)))  # fmt: skip
    (tmp_path / "train_clean.csv").write_text("landmark_id,images\n7,abc123 f00d42\n")
    rows = ADAPTERS["gldv2"].rows("gldv2", tmp_path)
    assert [(r["id"], r["label"]) for r in rows] == [
        ("gldv2:train/a/b/c/abc123.jpg", 7), ("gldv2:train/f/0/0/f00d42.jpg", 7)]  # fmt: skip
    (tmp_path / "train_clean.csv").write_text("landmark_id,images\n7,abc123 0ff\n")
    with pytest.raises(ManifestError, match=r"train/0/f/f/0ff.jpg: listed in the GLDv2 csv"):
        ADAPTERS["gldv2"].rows("gldv2", tmp_path)


def test_missing_or_empty_roots_show_the_expected_layout(tmp_path):
    with pytest.raises(ManifestError, match=r"does not exist; expected ROOT/<wnid>/\*.JPEG"):
        ADAPTERS["imagenet22k"].rows("in22k", tmp_path / "nowhere")
    with pytest.raises(ManifestError, match="no images under .*train_clean.csv or"):
        ADAPTERS["gldv2"].rows("gldv2", tmp_path)
    with pytest.raises(ConfigError, match="--seed-root gldv2=PATH"):
        resolve("gldv2", SeedSetsConfig())
    with pytest.raises(ConfigError, match="adapters.mine to one of"):
        resolve("mine", SeedSetsConfig(roots={"mine": str(tmp_path)}))


def test_cli_writes_a_manifest_per_seed_set(tmp_path, capsys):
    _write(tmp_path / "flowers" / "rose" / "1.jpg", _jpeg(1))
    _write(tmp_path / "flowers" / "tulip" / "2.png", encode(make_photo(2, 40, 30), "PNG"))
    config = tmp_path / "seeds.yaml"
    config.write_text("adapters: {flowers: imagefolder}\n")
    code = cli.main(["--seed-sets", "flowers", "--seed-root", f"flowers={tmp_path / 'flowers'}",
                     "--config", str(config), "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["flowers"]["images"] == 2
    dataset = ManifestImageDataset.from_manifests([tmp_path / "out" / "flowers.parquet"])
    assert [r["label"] for r in dataset.rows] == [0, 1] and dataset[1].shape == (3, 30, 40)
    assert cli.main(["--seed-sets", "gldv2", "--out", str(tmp_path / "out")]) == 2
    assert "no root; give --seed-root gldv2=PATH" in capsys.readouterr().err
    assert cli.main(["--seed-sets", "gldv2", "--seed-root", "gldv2", "--out", "o"]) == 2
    assert "--seed-root 'gldv2': expected NAME=PATH" in capsys.readouterr().err


def test_manifest_adapter_passes_rows_through(tmp_path):
    _write(tmp_path / "a.jpg", _jpeg(1))
    pq.write_table(pa.table({"id": ["x"], "path": ["a.jpg"], "label": [3]}), tmp_path / "m.parquet")
    (row,) = ADAPTERS["manifest"].rows("mine", tmp_path / "m.parquet")
    assert row["id"] == "mine:x" and row["label"] == 3 and row["path"] == str(tmp_path / "a.jpg")
