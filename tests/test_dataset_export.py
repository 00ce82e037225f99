"""The curated set as WebDataset shards and as a Hugging Face dataset, read back with the
``webdataset`` and ``datasets`` libraries: the same bytes and provenance as the manifest,
counts reconciled, unreadable rows reported, reruns resuming."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pyarrow as pa
import pytest
from PIL import Image

from manifests.dataset_export import export_dataset
from manifests.errors import ManifestError
from manifests.image_shards import ImageShardWriter
from manifests.parquet_io import ShardedParquet
from manifests.schemas import LVD
from pipelines.demo.synthetic_images import encode, make_photo

webdataset = pytest.importorskip("webdataset")
datasets = pytest.importorskip("datasets")


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_photo(seed, 40, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def lvd(tmp_path):
    """An LVD manifest of 7 rows: 4 images in a tar shard, 2 files (one PNG), and a file
    that is not an image; ids with characters a WebDataset key cannot hold."""
    images = {f"pool:{i}": encode(make_photo(i, 48, 40)) for i in range(4)}
    tar = tmp_path / "build" / "safety" / "00000.tar"
    tar.parent.mkdir(parents=True)
    writer = ImageShardWriter(tar)
    for i, data in enumerate(images.values()):
        writer.add(f"k{i}", data, {})
    writer.close()
    files = tmp_path / "build" / "files"
    files.mkdir()
    (files / "a.jpg").write_bytes(encode(make_photo(10, 50, 50)))
    (files / "b.png").write_bytes(_png(11))
    (files / "broken.jpg").write_bytes(b"<html>not an image</html>")
    images |= {"seed/a.jpg": (files / "a.jpg").read_bytes(), "b": (files / "b.png").read_bytes()}
    rows = [{"id": f"pool:{i}", "path": None, "tar": str(tar), "key": f"k{i}"} for i in range(4)]
    rows += [{"id": "seed/a.jpg", "path": str(files / "a.jpg")},
             {"id": "b", "path": str(files / "b.png")},
             {"id": "broken", "path": str(files / "broken.jpg")}]  # fmt: skip
    for i, row in enumerate(rows):
        row |= {"seed_sets": ["imagenet22k"] + (["gldv2"] if i % 2 else []),
                "methods": ["sample"], "seed_ids": [f"s{i}"], "best_similarity": 0.5 + i / 100,
                "cluster": None if i % 3 else i, "copies": 1 + i % 2}  # fmt: skip
    lvd = ShardedParquet(tmp_path / "build" / "retrieve" / "lvd", LVD)
    lvd.write(0, pa.Table.from_pylist(rows, schema=LVD.arrow))
    return lvd.root, images, {r["id"]: r for r in rows}


def _check_provenance(meta: dict, row: dict) -> None:
    for column in ("seed_sets", "methods", "seed_ids", "cluster", "copies"):
        assert meta[column] == row[column], column
    assert meta["best_similarity"] == pytest.approx(row["best_similarity"], abs=1e-6)


def test_webdataset_shards_hold_the_images_and_their_provenance(lvd, tmp_path):
    manifest, images, rows = lvd
    out = tmp_path / "wds"
    summary = export_dataset([manifest], "webdataset", out, shard_size=3, progress=False)
    assert (summary["rows"], summary["exported"], summary["failed"], summary["shards"]) == \
        (7, 6, 1, 3)  # fmt: skip
    assert "broken.jpg" in summary["failures"][0]["error"]
    assert json.loads((out / "export.json").read_text())["exported"] == 6
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 6
    for sample in samples:
        meta = json.loads(sample["json"])
        data = sample.get("jpg") or sample.get("png")
        assert data == images[meta["id"]], meta["id"]
        _check_provenance(meta, rows[meta["id"]])
        assert "." not in sample["__key__"] and "/" not in sample["__key__"]
    assert {json.loads(s["json"])["id"] for s in samples} == set(images)
    decoded = next(iter(webdataset.WebDataset(urls, shardshuffle=False).decode("pil")))
    assert decoded["jpg"].size == (48, 40)


def test_a_hugging_face_dataset_loads_with_its_image_feature(lvd, tmp_path):
    manifest, images, rows = lvd
    out = tmp_path / "hf"
    summary = export_dataset([manifest], "hf", out, shard_size=4, progress=False)
    assert (summary["exported"], summary["shards"]) == (6, 2)
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]  # fmt: skip
    dataset = datasets.load_dataset(str(out), split="train")
    assert isinstance(dataset.features["image"], datasets.Image)
    assert len(dataset) == 6
    assert dataset[0]["image"].size == (48, 40)  # decoded by datasets, as PIL
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    for item in raw:
        assert item["image"]["bytes"] == images[item["id"]], item["id"]
        _check_provenance(item, rows[item["id"]])


def test_a_rerun_keeps_verified_shards_and_redoes_the_rest(lvd, tmp_path):
    manifest, images, _ = lvd
    out = tmp_path / "wds"
    first = export_dataset([manifest], "webdataset", out, shard_size=3, progress=False)
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    (out / "00001.tar").unlink()  # killed before this shard committed
    (out / "00002.tar").write_bytes(b"half a tar")  # damaged
    (out / "00007.tar").write_bytes(b"")  # a shard from a longer manifest
    again = export_dataset([manifest], "webdataset", out, shard_size=3, progress=False)
    assert again["shards_kept_from_before"] == 1
    assert {k: again[k] for k in ("rows", "exported", "failed")} == {
        k: first[k] for k in ("rows", "exported", "failed")
    }  # the failure is reported again
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before
    third = export_dataset([manifest], "webdataset", out, shard_size=3, progress=False)
    assert third["shards_kept_from_before"] == 3 and third["failed"] == 1


def test_cli_exits_with_one_line_when_no_image_can_be_read(tmp_path):
    row = {"id": "x", "path": str(tmp_path / "missing.jpg"), "seed_sets": ["s"],
           "methods": ["sample"]}  # fmt: skip
    lvd = ShardedParquet(tmp_path / "lvd", LVD)
    lvd.write(0, pa.Table.from_pylist([row], schema=LVD.arrow))
    done = subprocess.run([sys.executable, "-m", "pipelines.export", "--manifest", str(lvd.root),
                           "--format", "hf", "--out", str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "missing.jpg" in done.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no rows to export"):
        export_dataset([tmp_path / "empty"], "hf", tmp_path / "out2")
