"""Copy-detection quality of the dedup, through ``build_lvd`` and through the standalone
commands. Prints JSON.

Held-out pools (no setting was tuned on a seed's pool before it was scored): real images
shipped by Debian packages (opencv-doc examples, mate-backgrounds, tuxpaint-stamps-default;
installed when missing, as root) and scikit-image's, each unique by content; the Tux Paint
stamps, small objects, are pasted onto random gradient backgrounds (the hard case for a
perceptual hash: it sees the background). ``--bases`` of them get ``--copies`` edited copies
each, by distinct transforms of :mod:`pipelines.demo.near_duplicates`; ``--singles`` more
are distractors. The pool is served on loopback and built by ``build_lvd`` (crawl, hash,
embed_pool, dedup of ``configs/curation/local.yaml``); the same crawled images then go
through ``pipelines.embed`` + ``pipelines.dedup``. Each route is scored by pairwise precision
and recall over its components, every pair counted (distractors merged with each other are
false pairs too), and recall per edit; the routes' agreement is the pairs they decide
differently. The kNN graph's speed, memory and recall at pool scale: benchmarks/pool_scale.py.

    python benchmarks/dedup_quality.py [--seed 0] [--workdir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from curation.dedup.stage import hash_and_dedup
from curation.embed import embed_manifests, load_embedder
from curation.safety.stage import check_pool
from manifests.config import describe, load_config
from manifests.parquet_io import read_manifest
from manifests.schemas import DEDUP, POOL
from pipelines.build import run_build
from pipelines.build_layout import BuildLayout
from pipelines.curation_config import CurationConfig
from pipelines.demo.loopback_web import serve_in_process
from pipelines.demo.near_duplicates import TRANSFORMS, edited_copy
from pipelines.demo.photos import ensure_packages, real_photos
from pipelines.engines import make_engine
from pipelines.lvd_stages import STAGE_NAMES

MAX_SIDE = 384  # images are stored at most this large, as a crawl with max_side would
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "curation" / "local.yaml"
BUILD_STAGES = list(STAGE_NAMES[: STAGE_NAMES.index("dedup") + 1])  # every stage dedup needs


def on_gradient(name: str, rgba: Image.Image, seed: int) -> Image.Image:
    """An opaque image as it is; a cut-out object (a stamp) at 35-60% of a random
    gradient canvas, somewhere on it."""
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    w, h = int(rng.integers(300, MAX_SIDE + 1)), int(rng.integers(240, 300))
    ends = rng.integers(0, 256, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    canvas = Image.fromarray((ends[0] + t[..., None] * (ends[1] - ends[0])).astype(np.uint8))
    side = int(min(w, h) * rng.uniform(0.35, 0.6))
    thing = rgba.copy()
    thing.thumbnail((side, side))
    x = int(rng.integers(0, w - thing.width + 1))
    y = int(rng.integers(0, h - thing.height + 1))
    canvas.paste(thing, (x, y), thing)
    return canvas


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def held_out_pool(args, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write the pool's JPEGs to ``out`` as NNNNNN.jpg; family (base index, or -1 for a
    distractor) and kind ("original", a transform, or "single") per file number."""
    images = real_photos(MAX_SIDE, compose=lambda n, im: on_gradient(n, im, args.seed),
                         limit=args.bases + args.singles if args.quick else None)  # fmt: skip
    rng = np.random.default_rng(args.seed)
    ordered = sorted(images)
    names = [ordered[i] for i in rng.permutation(len(ordered))]
    if len(names) < args.bases + args.singles:
        raise SystemExit(f"{len(names)} distinct images; --bases + --singles need more")
    out.mkdir(parents=True, exist_ok=True)
    family, kind = [], []

    def add(image: Image.Image, fam: int, k: str) -> None:
        (out / f"{len(family):06d}.jpg").write_bytes(_jpeg(image))
        family.append(fam)
        kind.append(k)

    for i, name in enumerate(names[: args.bases]):
        add(images[name], i, "original")
        for t in rng.choice(sorted(TRANSFORMS), args.copies, replace=False):
            add(edited_copy(images[name], str(t), seed=args.seed * 100_000 + i), i, str(t))
    for name in names[args.bases : args.bases + args.singles]:
        add(images[name], -1, "single")
    return np.array(family), np.array(kind)


def _pairs(*labels: np.ndarray) -> int:
    """Pairs of rows that agree on every one of ``labels``."""
    _, counts = np.unique(np.stack(labels, 1), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def pair_scores(labels: np.ndarray, family: np.ndarray, kind: np.ndarray) -> dict:
    """Pairwise precision/recall of the components ``labels`` against the families; every
    pair counts, a distractor being a family of its own."""
    truth = np.where(family >= 0, family, -1 - np.arange(len(family)))
    predicted, true, correct = _pairs(labels), _pairs(truth), _pairs(labels, truth)
    precision = correct / predicted if predicted else 1.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    original = {f: r for r, f in enumerate(family) if kind[r] == "original"}
    per_edit = {}
    for t in sorted(set(kind) - {"original", "single"}):
        rows = np.flatnonzero(kind == t)
        joined = [labels[r] == labels[original[family[r]]] for r in rows]
        per_edit[t] = {"copies": len(rows), "recall": round(float(np.mean(joined)), 3)}
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "pairs": {"predicted": predicted, "true": true, "correct": correct},
            "recall_per_edit": per_edit}  # fmt: skip


def _file_numbers(pool_manifest: Path) -> dict[str, int]:
    pool = read_manifest([pool_manifest], POOL, ["id", "url", "status"]).to_pylist()
    return {r["id"]: int(r["url"].rsplit("/", 1)[1].split(".")[0]) for r in pool
            if r["status"] == "ok"}  # fmt: skip


def _components(dedup_dir: Path, number: dict[str, int], n: int) -> np.ndarray:
    """Copy component per file number, labelled by file numbers (not crawl ids)."""
    table = read_manifest([dedup_dir], DEDUP, ["id", "copy_component"]).to_pylist()
    ids = [r["id"] for r in table]
    labels = np.full(n, -1, np.int64)
    for r in table:  # labels are row numbers of the dedup manifest: map them to files
        labels[number[r["id"]]] = number[ids[r["copy_component"]]]
    if (labels < 0).any():
        raise SystemExit(f"{int((labels < 0).sum())} images were not crawled")
    return labels


def routes(args, workdir: Path) -> dict:
    family, kind = held_out_pool(args, workdir / "web")
    n = len(family)
    config = load_config(CurationConfig, RECIPE)
    config.seeds.roots = {s.name: str(workdir / "web") for s in config.seed_sets}
    config.crawl.fetch.allow_private_networks = True
    build = BuildLayout(workdir / "build")
    engine = make_engine("local")
    started = time.perf_counter()
    try:
        with serve_in_process(workdir / "web") as port:
            urls = workdir / "urls.txt"
            urls.write_text("".join(f"http://127.0.0.1:{port}/{i:06d}.jpg\n" for i in range(n)))
            config.urls = [str(urls)]
            run_build(build.out, config, engine, BUILD_STAGES, progress=False)
    finally:
        engine.close()
    build_s = time.perf_counter() - started
    number = _file_numbers(build.pool_manifest)
    via_build = _components(build.dedup_manifest, number, n)

    started = time.perf_counter()  # pipelines.safety, .embed, then .dedup --embeddings
    model = config.copy_model or config.model
    check_pool([build.pool_manifest], workdir / "cli" / "safety", config.safety, progress=False)
    embed_manifests([workdir / "cli" / "safety" / "manifest"], load_embedder(model),
                    workdir / "cli" / "emb", config.embed, progress=False)  # fmt: skip
    hash_and_dedup([build.pool_manifest], workdir / "cli", workdir / "cli" / "emb",
                   config=config.dedup, progress=False)  # fmt: skip
    cli_s = time.perf_counter() - started
    via_cli = _components(workdir / "cli" / "dedup", number, n)
    same = _pairs(via_build, via_cli)
    return {
        "seed": args.seed, "images": n, "bases": args.bases, "copies_per_base": args.copies,
        "singles": args.singles, "model": model,
        "build_lvd": pair_scores(via_build, family, kind) | {"seconds": round(build_s, 1)},
        "cli": pair_scores(via_cli, family, kind) | {"seconds": round(cli_s, 1)},
        "pairs_decided_differently": _pairs(via_build) + _pairs(via_cli) - 2 * same,
        "dedup_stats": json.loads((build.dedup_stats).read_text()),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--seed", type=int, default=0, help="which images are bases, and the edits")
    p.add_argument("--bases", type=int, default=120)
    p.add_argument("--copies", type=int, default=3, help="edited copies per base")
    p.add_argument("--singles", type=int, default=240, help="distractors")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-bench-dedup"))
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny pool of the photos already installed: a smoke run in seconds",
    )
    args = p.parse_args()
    if args.quick:
        args.bases, args.copies, args.singles = 8, 2, 8
    else:
        ensure_packages()
    shutil.rmtree(args.workdir, ignore_errors=True)  # fresh timings, never a resume
    print(json.dumps({"routes": routes(args, args.workdir)}, indent=1))


if __name__ == "__main__":
    main()
