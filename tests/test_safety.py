"""The safety stage on real photos (scikit-image's): NudeNet's detector finds faces, the
blur leaves none it can find again, images at the NSFW threshold are dropped, bad input is
a row with a reason, and a rerun resumes from the committed shards."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from curation.safety.blur import blur_boxes, widen
from curation.safety.detector import DetectorConfig, SafetyDetector
from curation.safety.stage import SafetyConfig, check_pool
from manifests.config import ConfigError
from manifests.image_rows import ImageBytesReader, read_image_rows
from manifests.parquet_io import read_manifest, write_image_manifest
from manifests.schemas import SAFETY

FACES = ("astronaut", "camera")  # one face each: frontal, and a profile behind a camera
NO_FACES = ("coffee", "rocket", "horse", "coins")


def photo(name: str) -> np.ndarray:
    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]


@pytest.fixture(scope="module")
def detector() -> SafetyDetector:
    return SafetyDetector(DetectorConfig())


def test_the_detector_finds_the_faces_of_real_photos_and_none_in_other_photos(detector):
    found = detector([photo(n) for n in FACES + NO_FACES])
    assert [len(d.face_boxes) for d in found] == [1] * len(FACES) + [0] * len(NO_FACES)
    x, y, w, h = found[0].face_boxes[0]  # the astronaut's face spans about x 175-270, y 85-180
    assert 200 < x + w / 2 < 245 and 110 < y + h / 2 < 155 and 70 < w < 130
    assert all(0 <= d.nsfw_score < 0.5 for d in found)


def test_a_batch_of_mixed_sizes_gives_what_each_image_alone_gives(detector):
    images = [photo(n) for n in ("astronaut", "coffee", "camera", "horse")]
    batched = detector(images)
    for image, together in zip(images, batched, strict=True):
        (alone,) = detector([image])
        assert together.nsfw_score == pytest.approx(alone.nsfw_score, abs=1e-4)
        assert together.face_boxes == alone.face_boxes


def _sharpness(image: np.ndarray) -> float:
    gray = image.astype(float).mean(axis=2)
    return float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())


def test_a_blurred_face_is_not_found_again_and_the_rest_is_untouched():
    sensitive = SafetyDetector(DetectorConfig(face_threshold=0.05))  # any hint of a face
    for name in FACES:
        image = photo(name)
        boxes = sensitive([image])[0].face_boxes
        blurred = blur_boxes(image, boxes, blocks=8, margin=0.15)
        again = sensitive([blurred])[0].face_boxes
        for x, y, w, h in (widen(b, 0.15, image.shape) for b in boxes):
            centres = [(b[0] + b[2] / 2, b[1] + b[3] / 2) for b in again]
            inside = [c for c in centres if x <= c[0] <= x + w and y <= c[1] <= y + h]
            assert inside == [], (name, inside)
            region = (slice(y, y + h), slice(x, x + w))
            assert _sharpness(blurred[region]) < _sharpness(image[region]) / 5
            blurred[region] = image[region]
        np.testing.assert_array_equal(blurred, image)  # nothing changed outside the boxes


def test_empty_and_outside_boxes_change_nothing():
    image = photo("coffee")
    out = blur_boxes(image, [(10, 10, 0, 5), (700, 500, 20, 20), (5, 5, 3, 0)], 8, 0.15)
    np.testing.assert_array_equal(out, image)


def _save(path: Path, image: np.ndarray) -> str:
    Image.fromarray(image).save(path)
    return str(path)


@pytest.fixture
def pool(tmp_path) -> tuple[Path, dict[str, str]]:
    """An image manifest: two photos with faces, one without, the colour wheel (NudeNet
    scores it 0.83 for an exposed class: a false positive that exercises the threshold), a
    file that is not an image, a truncated JPEG and one image over the pixel cap."""
    d = tmp_path / "images"
    d.mkdir()
    files = {n: _save(d / f"{n}.png", photo(n)) for n in (*FACES, "coffee", "colorwheel")}
    (d / "junk.jpg").write_bytes(b"<html>not an image</html>")
    files["junk"] = str(d / "junk.jpg")
    buf = io.BytesIO()
    Image.fromarray(photo("rocket")).save(buf, "JPEG")
    (d / "cut.jpg").write_bytes(buf.getvalue()[:2000])
    files["cut"] = str(d / "cut.jpg")
    files["huge"] = _save(d / "huge.png", np.zeros((2100, 2100, 3), np.uint8))
    rows = [{"id": n, "path": p, "tar": None, "key": None} for n, p in files.items()]
    return write_image_manifest(rows, tmp_path / "pool.parquet"), files


CONFIG = SafetyConfig(nsfw_threshold=0.6, rows_per_shard=3, max_pixels=4_000_000)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_the_stage_blurs_into_its_own_shards_drops_at_the_threshold_and_skips_bad_input(
    pool, tmp_path
):
    manifest, files = pool
    before = {n: _digest(p) for n, p in files.items()}
    stats = check_pool([manifest], tmp_path / "safety", CONFIG, progress=False)
    table = read_manifest([tmp_path / "safety" / "manifest"], SAFETY)
    rows = {r["id"]: r for r in table.to_pylist()}
    status = {i: r["status"] for i, r in rows.items()}
    assert status == {"astronaut": "ok", "camera": "ok", "coffee": "ok", "colorwheel": "nsfw",
                      "junk": "error", "cut": "error", "huge": "error"}  # fmt: skip
    assert rows["colorwheel"]["nsfw_score"] >= 0.6 > rows["coffee"]["nsfw_score"]
    assert "not an image Pillow reads" in rows["junk"]["error"]
    assert rows["cut"]["error"].startswith("OSError")  # truncated
    assert rows["huge"]["error"] == "too many pixels: 2100x2100, over the 4000000 cap"
    counts = {"images": 7, "kept": 3, "nsfw": 1, "errors": 3, "with_faces": 2, "faces": 2,
              "blurred": 2}  # fmt: skip
    assert {k: stats[k] for k in counts} == counts
    assert json.loads((tmp_path / "safety" / "safety_stats.json").read_text()) == stats

    # later stages read the kept images, the faces from the stage's own shards, blurred
    readable = {r["id"]: r for r in read_image_rows([tmp_path / "safety" / "manifest"])}
    assert set(readable) == {"astronaut", "camera", "coffee"}
    assert readable["coffee"]["source"] == files["coffee"]
    detector = SafetyDetector(DetectorConfig(face_threshold=0.05))
    for name in FACES:
        source = Path(readable[name]["source"]).resolve()
        assert source.parent == tmp_path / "safety" / "images" and rows[name]["faces"] == 1
        image = Image.open(io.BytesIO(ImageBytesReader().read(readable[name])))
        assert image.size == Image.open(files[name]).size
        (x, y, w, h), = rows[name]["face_boxes"]  # fmt: skip
        cx, cy = x + w / 2, y + h / 2
        found = detector([np.asarray(image.convert("RGB"))])[0].face_boxes
        assert not [b for b in found if abs(b[0] + b[2] / 2 - cx) < w / 2
                    and abs(b[1] + b[3] / 2 - cy) < h / 2]  # fmt: skip
    assert {n: _digest(p) for n, p in files.items()} == before  # the originals stay as they were


def test_a_rerun_keeps_the_committed_shards_and_redoes_the_missing_one(pool, tmp_path):
    manifest, _ = pool
    out = tmp_path / "safety"
    check_pool([manifest], out, CONFIG, progress=False)
    shards = sorted((out / "manifest").glob("*.parquet"))
    assert len(shards) == 3
    first = read_manifest([out / "manifest"], SAFETY)
    kept_time = shards[0].stat().st_mtime_ns
    shards[1].unlink()  # as if killed before shard 1 committed, with its tar half-written
    (out / "images" / "00001.tar").rename(out / "images" / "00001.tar.tmp-killed")
    check_pool([manifest], out, CONFIG, progress=False)
    assert shards[0].stat().st_mtime_ns == kept_time and shards[1].exists()
    assert read_manifest([out / "manifest"], SAFETY).equals(first)
    tars = sorted(p.name for p in (out / "images").iterdir())
    assert tars == ["00000.tar", "00001.tar", "00002.tar"]


def test_the_command_runs_alone_and_says_why_when_nothing_is_kept(pool, tmp_path):
    manifest, files = pool
    cmd = [sys.executable, "-m", "pipelines.safety", "--no-progress", "--set",
           "nsfw_threshold=0.6", "--set", "max_pixels=4000000"]  # fmt: skip
    done = subprocess.run([*cmd, "--manifest", str(manifest), "--out", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kept"] == 3
    junk = write_image_manifest([{"id": "junk", "path": files["junk"]}], tmp_path / "junk.parquet")
    done = subprocess.run([*cmd, "--manifest", str(junk), "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: safety: no image of 1 kept: 0 NSFW, 1 unreadable")
    )


@pytest.mark.parametrize("setting, message", [
    ({"nsfw_labels": ["FACE_MALE", "NAKED"]}, "['NAKED'] are not classes of the model"),
    ({"input_side": 300}, "300 is not a positive multiple of 32"),
    ({"device": "tpu"}, "'tpu'; expected auto, cpu or cuda"),
])  # fmt: skip
def test_bad_detector_settings_are_refused_by_name(setting, message):
    with pytest.raises(ConfigError, match=f"safety.detector.*{message}".replace("[", r"\[")):
        DetectorConfig(**setting).validate()
