"""Adapters from a seed set's on-disk layout to image rows (id, path or tar + key, label).

Each adapter says which layout it reads, so a missing or malformed root fails with the
layout it expected.
"""

from __future__ import annotations

import csv
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests.errors import ManifestError
from manifests.image_rows import read_image_rows, row_location
from manifests.image_shards import IMAGE_EXTENSIONS

IMAGE_SUFFIXES = {f".{ext.lower()}" for ext in IMAGE_EXTENSIONS}
Row = dict[str, Any]


@dataclass(frozen=True)
class Adapter:
    name: str
    layout: str  # shown in errors
    read: Callable[[Path], list[Row]]

    def rows(self, set_name: str, root: str | Path) -> list[Row]:
        root = Path(root)
        if not root.exists():
            raise ManifestError(
                f"seed set {set_name}: {root} does not exist; expected {self.layout}"
            )
        rows = self.read(root)
        if not rows:
            flat = len(_images(root)) if root.is_dir() else 0
            found = f" (found {flat} images directly in it, outside any folder)" if flat else ""
            raise ManifestError(
                f"seed set {set_name}: no images under {root}{found}; expected {self.layout}"
            )
        return [{**r, "id": f"{set_name}:{r['id']}"} for r in rows]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _file_row(root: Path, path: Path, label: int | None) -> Row:
    rel = path.relative_to(root).as_posix()
    return {"id": rel, "path": str(path), "tar": None, "key": None, "label": label}


def read_imagefolder(root: Path) -> list[Row]:
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    return [_file_row(root, f, c) for c, folder in enumerate(classes) for f in _images(folder)]


def read_imagenet22k(root: Path) -> list[Row]:
    """Class folders, or the release's per-class ``<wnid>.tar`` files (or both)."""
    rows = read_imagefolder(root)
    tars = sorted(root.glob("*.tar"))
    wnids = sorted({p.name for p in root.iterdir() if p.is_dir()} | {t.stem for t in tars})
    label = {w: i for i, w in enumerate(wnids)}
    rows = [{**r, "label": label[Path(r["id"]).parts[0]]} for r in rows]
    for tar in tars:
        with tarfile.open(tar) as t:
            members = sorted(m.name for m in t if m.isfile())
        for name in members:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                key = name.rsplit(".", 1)[0]
                rows.append({"id": f"{tar.stem}/{key}", "path": None, "tar": str(tar),
                             "key": key, "label": label[tar.stem]})  # fmt: skip
    return rows


def read_imagenet1k_val(root: Path) -> list[Row]:
    """``val/`` images with ``LOC_val_solution.csv`` (ImageId, PredictionString) beside it,
    or ``val/<wnid>/`` folders."""
    val = root / "val"
    if not val.is_dir():
        return []
    if any(p.is_dir() for p in val.iterdir()):
        return read_imagefolder(val)
    solution = root / "LOC_val_solution.csv"
    if not solution.exists():
        return []
    with open(solution, newline="") as f:
        wnid_of = {r["ImageId"]: r["PredictionString"].split()[0] for r in csv.DictReader(f)}
    label = {w: i for i, w in enumerate(sorted(set(wnid_of.values())))}
    return [_file_row(root, p, label.get(wnid_of.get(p.stem))) for p in _images(val)]


def read_gldv2(root: Path) -> list[Row]:
    """``train_clean.csv`` (landmark_id, images) or ``train.csv`` (id, url, landmark_id),
    images at ``train/a/b/c/<id>.jpg``."""
    clean, full = root / "train_clean.csv", root / "train.csv"
    pairs: list[tuple[str, int]] = []
    if clean.exists():
        with open(clean, newline="") as f:
            for r in csv.DictReader(f):
                pairs += [(i, int(r["landmark_id"])) for i in r["images"].split()]
    elif full.exists():
        with open(full, newline="") as f:
            pairs = [(r["id"], int(r["landmark_id"])) for r in csv.DictReader(f)]
    rows = []
    for image_id, landmark in pairs:
        path = root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        if not path.exists():
            raise ManifestError(f"{path}: listed in the GLDv2 csv but missing")
        rows.append(_file_row(root, path, landmark))
    return rows


def read_manifest_adapter(root: Path) -> list[Row]:
    rows = read_image_rows([root])
    return [{"id": r["id"], **row_location(r), "label": r["label"]} for r in rows]


ADAPTERS: dict[str, Adapter] = {a.name: a for a in (
    Adapter("imagefolder", "ROOT/<class>/*.jpg", read_imagefolder),
    Adapter("imagenet22k", "ROOT/<wnid>/*.JPEG or ROOT/<wnid>.tar", read_imagenet22k),
    Adapter("imagenet1k", "ROOT/train/<wnid>/*.JPEG",
            lambda root: read_imagefolder(root / "train") if (root / "train").is_dir() else []),
    Adapter("imagenet1k_val", "ROOT/val/*.JPEG with ROOT/LOC_val_solution.csv, or "
            "ROOT/val/<wnid>/*.JPEG", read_imagenet1k_val),
    Adapter("gldv2", "ROOT/train_clean.csv or ROOT/train.csv, images at "
            "ROOT/train/a/b/c/<id>.jpg", read_gldv2),
    Adapter("manifest", "a Parquet manifest (path, or tar + key) or a directory of them",
            read_manifest_adapter),
)}  # fmt: skip
