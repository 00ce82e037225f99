"""Safety stage figures on this machine: throughput and quality, as one JSON object.

Throughput, on N real photos (the demo's: opencv-doc, mate-backgrounds, tuxpaint stamps,
scikit-image; at most 512 px, JPEG files), in one run:
  - detector: NudeNet's 320n.onnx through our batched session, per input side, decoding
    left out (one model gives both the NSFW score and the faces);
  - blur: pixelating and re-encoding the images that have faces;
  - stage: ``check_pool`` over the files as build_lvd runs it (decode, detect, blur, write
    the shards), rated over the images it checked;
  - pixel_limit: the crawl's decode + resize + encode alone on the same files, one process
    per core (benchmarks/crawl_throughput.py), the ceiling a crawl of this machine reaches.

Quality, on photos that packages ship (nothing explicit is added anywhere):
  - faces: 18 faces, located by hand (centre points), in 13 photos: scikit-image's
    astronaut and camera, opencv-doc's basketball1, left06 and messi5 (Debian), and the test
    photos of the face_recognition 1.3.0 and insightface 2.1 sdists (PyPI, downloaded into
    --workdir with pip). A face is found when a box holds its centre (each box finds one);
    recall for frontal and profile faces, and boxes that hold no face;
  - false face boxes per photo on the demo's photos without people (``NO_PEOPLE`` leaves
    out the ones with people);
  - NSFW false positive rate on all those ordinary photos, per threshold, with the photos
    scored highest.

    python benchmarks/safety.py [--images 512] [--workdir DIR] [--skip-throughput] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
from crawl_throughput import pixel_limit
from PIL import Image

from curation.safety.blur import blur_boxes
from curation.safety.detector import Detections, DetectorConfig, SafetyDetector
from curation.safety.stage import SafetyConfig, check_pool
from manifests.config import describe, parse_with_quick
from manifests.parquet_io import write_image_manifest
from pipelines.demo.photos import ensure_packages, real_photos

OPENCV = "/usr/share/doc/opencv-doc/examples/data"
SDISTS = ("face_recognition==1.3.0", "insightface==2.1")
# (photo, face centre x, y in its pixels, kind), located by hand
FACES = [
    ("skimage/astronaut", 223, 131, "frontal"), ("skimage/camera", 224, 162, "profile"),
    ("opencv/basketball1.png", 88, 116, "frontal"), ("opencv/left06.jpg", 291, 188, "profile"),
    ("opencv/messi5.jpg", 240, 115, "frontal"),
    ("face_recognition/obama.jpg", 492, 293, "frontal"),
    ("face_recognition/obama2.jpg", 338, 473, "frontal"),
    ("face_recognition/obama3.jpg", 773, 462, "frontal"),
    ("face_recognition/biden.jpg", 559, 421, "frontal"),
    ("face_recognition/obama_partial_face.jpg", 99, 293, "frontal"),
    ("face_recognition/obama_partial_face2.jpg", 455, 298, "frontal"),
    ("insightface/t1.jpg", 116, 343, "frontal"), ("insightface/t1.jpg", 1176, 346, "frontal"),
    ("insightface/t1.jpg", 793, 425, "frontal"), ("insightface/t1.jpg", 964, 139, "frontal"),
    ("insightface/t1.jpg", 511, 359, "frontal"), ("insightface/t1.jpg", 327, 220, "frontal"),
    ("insightface/Tom_Hanks_54745.png", 46, 61, "frontal"),
]  # fmt: skip
PEOPLE = ("data/astronaut", "data/camera", "data/basketball1", "data/left06", "data/messi5")


def face_photos(workdir: Path, faces: list[tuple]) -> dict[str, np.ndarray]:
    """The photos of ``faces`` as RGB arrays (the sdists are downloaded once, if needed)."""
    sdists = workdir / "sdists"
    if not sdists.is_dir() and any(f[0].split("/")[0] in ("face_recognition", "insightface")
                                   for f in faces):  # fmt: skip
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "-d", str(sdists), *SDISTS], check=True)
    found = {}
    for archive in sdists.glob("*.tar.gz"):
        source = archive.name.split("-")[0]
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = f"{source}/{Path(member.name).name}"
                if any(f[0] == name for f in faces):
                    with Image.open(tar.extractfile(member)) as image:
                        found[name] = np.asarray(image.convert("RGB"))
    found["skimage/astronaut"] = skimage.data.astronaut()
    found["skimage/camera"] = np.stack([skimage.data.camera()] * 3, axis=-1)
    for name in ("basketball1.png", "left06.jpg", "messi5.jpg"):
        if any(f[0] == f"opencv/{name}" for f in faces):
            found[f"opencv/{name}"] = np.asarray(Image.open(f"{OPENCV}/{name}").convert("RGB"))
    missing = {f[0] for f in faces} - set(found)
    if missing:
        raise SystemExit(f"face photos not found: {sorted(missing)}")
    return found


def detect_all(detector: SafetyDetector, images: list[np.ndarray], batch: int = 16):
    return [d for i in range(0, len(images), batch) for d in detector(images[i : i + batch])]


def _holds(box: tuple[int, ...], x: float, y: float) -> bool:
    return box[0] <= x <= box[0] + box[2] and box[1] <= y <= box[1] + box[3]


def face_scores(found: dict[str, Detections], threshold: float, faces: list[tuple]) -> dict:
    """Recall per kind of face, and boxes at ``threshold`` that hold no face."""
    hits = {"frontal": 0, "profile": 0}
    spare = 0
    for name, seen in found.items():
        boxes = [b for b, s in zip(seen.face_boxes, seen.face_scores, strict=True)
                 if s >= threshold]  # fmt: skip
        for x, y, kind in [(x, y, kind) for n, x, y, kind in faces if n == name]:
            box = next((b for b in boxes if _holds(b, x, y)), None)
            if box is not None:
                boxes.remove(box)
                hits[kind] += 1
        spare += len(boxes)
    total = {k: sum(f[3] == k for f in faces) for k in hits}
    return {"recall": round(sum(hits.values()) / len(faces), 3),
            **{f"recall_{k}": f"{hits[k]}/{total[k]}" for k in hits},
            "boxes_without_a_face": spare}  # fmt: skip


def quality(workdir: Path, sides: list[int], face_thresholds: list[float],
            nsfw_thresholds: list[float], quick: bool = False) -> dict:  # fmt: skip
    located = [f for f in FACES if f[0].startswith("skimage/")] if quick else FACES
    faces = face_photos(workdir, located)
    ordinary = real_photos(512, limit=24 if quick else None)
    no_people = {n: np.asarray(im) for n, im in ordinary.items() if n not in PEOPLE}
    report: dict = {"face_photos": len(faces), "faces": len(located),
                    "photos_without_people": len(no_people)}  # fmt: skip
    for side in sides:
        detector = SafetyDetector(DetectorConfig(input_side=side,
                                                 face_threshold=min(face_thresholds)))  # fmt: skip
        found = dict(zip(faces, detect_all(detector, list(faces.values())), strict=True))
        plain = detect_all(detector, list(no_people.values()))
        per_threshold = {}
        for t in face_thresholds:
            boxes = sum(sum(s >= t for s in d.face_scores) for d in plain)
            per_threshold[str(t)] = {
                **face_scores(found, t, located),
                "false_boxes_per_photo": round(boxes / len(plain), 4),
                "photos_with_a_false_box": sum(any(s >= t for s in d.face_scores) for d in plain),
            }
        scores = np.array([d.nsfw_score for d in plain + list(found.values())])
        names = list(no_people) + list(faces)
        top = np.argsort(-scores)[:6]
        report[f"side_{side}"] = {
            "faces": per_threshold,
            "nsfw_false_positive_rate": {
                str(t): round(float((scores >= t).mean()), 4) for t in nsfw_thresholds
            },  # fmt: skip
            "nsfw_highest": {names[i]: round(float(scores[i]), 3) for i in top},
        }
    return report


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def throughput(workdir: Path, n: int, sides: list[int]) -> dict:
    # as a crawl would have stored them: its aspect-ratio limit refuses strips
    photos = [p for p in real_photos(512, limit=n).values() if max(p.size) <= 3 * min(p.size)]
    files = workdir / "photos"
    files.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        names.append(f"{i:06d}.jpg")
        photos[i % len(photos)].save(files / names[-1], quality=90)
    # first: its worker processes are forked, and a fork after onnxruntime has started its
    # threads can hang
    limit = pixel_limit(files, names, os.cpu_count() or 1)
    images = [np.asarray(Image.open(files / name).convert("RGB")) for name in names]
    report: dict = {"images": n, "cores": os.cpu_count(), "pixel_limit": limit}
    for side in sides:
        detector = SafetyDetector(DetectorConfig(input_side=side))
        detect_all(detector, images[:32])  # warm up
        start = time.perf_counter()
        found = detect_all(detector, images)
        report[f"detector_{side}_images_per_s"] = _rate(n, time.perf_counter() - start)
    with_faces = [(im, d.face_boxes) for im, d in zip(images, found, strict=True) if d.face_boxes]
    start = time.perf_counter()
    for image, boxes in with_faces:
        Image.fromarray(blur_boxes(image, boxes, 8, 0.15)).save(
            Path(os.devnull), "JPEG", quality=90)  # fmt: skip
    report["blur_images_per_s"] = _rate(len(with_faces), time.perf_counter() - start)
    report["images_with_faces"] = len(with_faces)
    rows = [{"id": name, "path": str(files / name)} for name in names]
    manifest = write_image_manifest(rows, workdir / "pool.parquet")
    out = Path(tempfile.mkdtemp(prefix="safety-", dir=workdir))
    start = time.perf_counter()
    stats = check_pool([manifest], out, SafetyConfig(rows_per_shard=128), progress=False)
    report["stage_images_per_s"] = _rate(stats["images"], time.perf_counter() - start)
    report["ratio_stage_to_pixel_limit"] = round(
        report["stage_images_per_s"] / report["pixel_limit"]["images_per_s"], 3)  # fmt: skip
    return report


def _numbers(text: str, kind: type) -> list:
    return [kind(v) for v in text.split(",") if v]


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lvd-safety")
    p.add_argument("--sides", default="320,640")
    p.add_argument("--face-thresholds", default="0.2,0.3,0.5")
    p.add_argument("--nsfw-thresholds", default="0.3,0.5,0.7,0.9")
    p.add_argument("--skip-throughput", action="store_true")
    args = parse_with_quick(p, {"images": 16, "sides": "320", "face_thresholds": "0.3",
                                "nsfw_thresholds": "0.5"})  # fmt: skip
    if not args.quick:  # quick: the photos already installed, the faces in scikit-image's
        ensure_packages()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sides = _numbers(args.sides, int)
    report = {}
    if not args.skip_throughput:  # first: see throughput()
        report["throughput"] = throughput(args.workdir, args.images, sides)
    report["quality"] = quality(args.workdir, sides, _numbers(args.face_thresholds, float),
                                _numbers(args.nsfw_thresholds, float), args.quick)  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
