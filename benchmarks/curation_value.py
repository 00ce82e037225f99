"""Does curation pay? A miniature of the DINOv2 paper's Table 2 (curated vs uncurated data,
same model and iterations) on a web built from Fashion-MNIST, through build_lvd and the
trainer. Prints JSON; writes ``WORKDIR/curation_value.html`` (the table and one bar plot
per measure).

    python benchmarks/curation_value.py [--workdir DIR] [--size N] [--iterations I]
        [--seeds 2] [--quick]

The web: Fashion-MNIST's train split (Debian's ``dataset-fashion-mnist``) with Zipf
classes (class r of a random order holds 1 / (r + 1)^2 of the head's images: head to
tail about 100:1), near-duplicates (the demo's edits) and off-topic images (crops of the
photos Debian packages ship, rendered glyphs), served on loopback and built by
``pipelines.build_lvd`` (crawl, hash, safety, embed, dedup, retrieve). Labels score; they
never curate. Held out of the pool: 50 seed images a class, a labelled memory bank
(``--bank`` a class) for the k-NN, and the split the curation ViT is trained on.

Arms, each ``--size`` images, each trained from scratch with the same recipe and
iterations (``--seeds`` runs each): uncurated (random from the crawl), random after
dedup, retrieval ``sample`` and ``cluster`` around the seed set, ``balanced`` (no seeds)
and the mix of balanced and sample. Rows: the curation embedder a ViT our trainer trained
on the held-out split, then EfficientNet-Lite0; and a control whose seed set covers 7 of
the 10 classes (those of Zipf ranks 2, 5 and 8 left out; seen / unseen classes reported).
Measured without training: label entropy / log 10, off-topic share, near-duplicate
share, fine-cluster coverage, share of the five rarest classes; after
training: k-NN top-1 on the test split (dinov2 protocol, k = 20), balanced accuracy,
accuracy on the pool's five rarest classes.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from ssl_fashion_mnist import RECIPE, ensure_dataset, read_idx, schedule  # noqa: I001 - benchmarks/

from curation.index import KMeansConfig, assign, kmeans
from manifests.config import describe, from_dict, load_config, parse_with_quick
from manifests.image_rows import read_image_rows, row_location
from manifests.parquet_io import read_manifest, write_image_manifest
from manifests.schemas import DEDUP, LVD, POOL
from pipelines.build import run_build
from pipelines.build_layout import BuildLayout
from pipelines.curation_config import CurationConfig
from pipelines.demo.loopback_web import serve_in_process
from pipelines.demo.near_duplicates import TRANSFORMS, edited_copy
from pipelines.demo.photos import real_photos
from pipelines.engines.local import LocalEngine
from training.config import TrainConfig
from training.eval.knn import extract
from training.models.loading import load_backbone
from training.train import train

CLASSES = 10
ARMS = ("uncurated", "dedup_random", "sample", "cluster", "balanced", "mix")
RETRIEVAL_ARMS = ("sample", "cluster", "balanced", "mix")
SEEDED_ARMS = ("sample", "cluster", "mix")
UNSEEN_RANKS = (2, 5, 8)  # the control's seed set leaves out these Zipf ranks' classes


@dataclass
class Setup:
    pool_per_class: int = 4_650  # images of the head class; class r holds this / (r+1)^2
    seeds_per_class: int = 50
    bank_per_class: int = 300
    embedder_per_class: int = 1_000  # the curation ViT's training split
    duplicate_share: float = 0.20
    off_topic_share: float = 0.15
    test_images: int = 10_000
    size: int = 2_000  # images per arm
    iterations: int = 150
    embedder_iterations: int = 300
    seeds: int = 2


# -- data ------------------------------------------------------------------------------


def splits(setup: Setup, rng: np.random.Generator) -> dict[str, Any]:
    """Per class: seed, bank and embedder images held out; the rest Zipf-cut for the pool."""
    images = read_idx("train-images-idx3-ubyte.gz")
    labels = read_idx("train-labels-idx1-ubyte.gz")
    order = rng.permutation(CLASSES)  # order[r]: the class of Zipf rank r
    parts = {"seeds": [], "bank": [], "embedder": [], "pool": []}
    for rank, c in enumerate(order):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.cumsum([setup.seeds_per_class, setup.bank_per_class, setup.embedder_per_class])
        seeds, bank, embedder, rest = np.split(rows, cuts)
        parts["seeds"].append(seeds)
        parts["bank"].append(bank)
        parts["embedder"].append(embedder)
        parts["pool"].append(rest[: max(1, round(setup.pool_per_class / (rank + 1) ** 2))])
    out = {name: np.concatenate(p) for name, p in parts.items()}
    test_images = read_idx("t10k-images-idx3-ubyte.gz")
    test_labels = read_idx("t10k-labels-idx1-ubyte.gz")
    return {"images": images, "labels": labels, "zipf_order": order.tolist(), **out,
            "test_images": test_images[: setup.test_images],
            "test_labels": test_labels[: setup.test_images]}  # fmt: skip


def fm_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels, "L").convert("RGB")


def off_topic_images(n: int, rng: np.random.Generator) -> list[Image.Image]:
    """28 px grey crops of the photos Debian packages ship, and rendered glyphs."""
    photos = list(real_photos(256, limit=200).values())
    font = ImageFont.load_default(size=18)
    images = []
    for i in range(n):
        if i % 2 and photos:
            photo = photos[int(rng.integers(len(photos)))].convert("L")
            side = int(rng.integers(24, min(photo.size) + 1))
            x, y = (int(rng.integers(0, s - side + 1)) for s in photo.size)
            images.append(photo.crop((x, y, x + side, y + side)).resize((28, 28)).convert("RGB"))
        else:
            image = Image.new("L", (28, 28), int(rng.integers(0, 80)))
            text = "".join(chr(int(c)) for c in rng.integers(33, 127, 2))
            ImageDraw.Draw(image).text((int(rng.integers(0, 8)), int(rng.integers(0, 6))), text,
                                       fill=int(rng.integers(150, 256)), font=font)  # fmt: skip
            images.append(image.convert("RGB"))
    return images


def write_web(site: Path, data: dict[str, Any], setup: Setup, rng: np.random.Generator) -> dict:
    """The pool's files (PNG) and what each one is: name -> {label, source, kind}."""
    site.mkdir(parents=True, exist_ok=True)
    pool = data["pool"]
    total = round(len(pool) / (1 - setup.duplicate_share - setup.off_topic_share))
    meta: dict[str, dict[str, Any]] = {}

    def put(name: str, image: Image.Image, label: int, source: int, kind: str) -> None:
        image.save(site / name, "PNG")
        meta[name] = {"label": label, "source": source, "kind": kind}

    for i in pool:
        put(f"fm{i}.png", fm_image(data["images"][i]), int(data["labels"][i]), int(i), "fm")
    edits = [t for t in TRANSFORMS if t not in ("text", "resize")]  # kept recognisable at 28 px
    for j, i in enumerate(rng.choice(pool, round(total * setup.duplicate_share))):
        edited = edited_copy(fm_image(data["images"][i]), edits[j % len(edits)], j)
        put(f"dup{j}.png", edited.resize((28, 28)), int(data["labels"][i]), int(i), "duplicate")
    for j, image in enumerate(off_topic_images(round(total * setup.off_topic_share), rng)):
        put(f"off{j}.png", image, -1, -1, "off_topic")
    return meta


def write_folder(root: Path, data: dict[str, Any], rows: np.ndarray) -> Path:
    """ROOT/<class>/<row>.png: a seed set as the imagefolder adapter reads it."""
    for i in rows:
        path = root / str(int(data["labels"][i])) / f"{int(i)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fm_image(data["images"][i]).save(path)
    return root


def write_labelled(out: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A labelled manifest of PNG files (the k-NN's memory bank and test split)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        path = out / "images" / f"{i}.png"
        if not path.exists():
            fm_image(pixels).save(path)
        rows.append({"id": f"{out.name}-{i}", "path": str(path), "label": int(label)})
    return write_image_manifest(rows, out / "manifest.parquet")


# -- the builds ------------------------------------------------------------------------


def recipe(urls: Path, seed_root: Path, model: str, setup: Setup) -> CurationConfig:
    """build_lvd's recipe: the seed set sampled around and clustered, a balanced draw, and
    the copy model fixed (EfficientNet-Lite0) so that every row dedups the same way."""
    n = setup.size
    return from_dict(CurationConfig, {
        "urls": [str(urls)],
        "seed_sets": [{"name": "fm_seeds", "method": "sample", "k": 16},
                      {"name": "fm_seeds", "method": "cluster", "min_seeds": 3,
                       "per_cluster": 10_000, "cap": 10 * n},
                      {"name": "web", "method": "balanced", "size": n}],
        "seeds": {"roots": {"fm_seeds": str(seed_root)}, "adapters": {"fm_seeds": "imagefolder"}},
        "model": model, "copy_model": "efficientnet_lite0",
        "crawl": {"shard_size": 4_000, "process": {"min_side": 16},
                  "fetch": {"allowed_networks": ["127.0.0.0/8"], "concurrency": 64}},
        "dedup": {"rows_per_shard": 4_000}, "safety": {"rows_per_shard": 4_000},
        "embed": {"rows_per_shard": 4_000, "batch_size": 64, "num_workers": 2},
        "kmeans": {"k": 50, "niter": 20},  # clusters of ~175: the cluster arm fills N
        "hierarchy": {"levels": [{"k": 200, "resampling_steps": 5}, {"k": 40}, {"k": 10}],
                      "min_cluster_size": 4},
    })  # fmt: skip


def build(out: Path, config: CurationConfig, reuse: Path | None = None) -> BuildLayout:
    """Run build_lvd into ``out``; ``reuse``: a build whose crawl and copy embeddings this
    one starts from (only the stages whose settings differ rerun)."""
    if reuse is not None and not out.exists():
        shutil.copytree(reuse, out)
        embedded = out / "embed_pool"
        if config.model != config.copy_model and not (embedded / "copy").exists():
            # the EfficientNet build's retrieval embeddings are this one's copy embeddings
            (embedded / "retrieval").rename(embedded / "copy")
            (embedded / "retrieval.source").rename(embedded / "copy.source")
    results = run_build(out, config, LocalEngine(), progress=True)
    print(json.dumps({r.stage: [r.status, round(r.seconds, 1)] for r in results}), flush=True)
    return BuildLayout(out)


def arms(b: BuildLayout, size: int, rng: np.random.Generator, which: tuple[str, ...]) -> dict:
    """Each arm's rows (read_image_rows form), ``size`` each (all when fewer)."""

    def take(rows: list[dict]) -> list[dict]:
        if len(rows) <= size:
            return rows
        return [rows[i] for i in np.sort(rng.choice(len(rows), size, replace=False))]

    crawled = read_image_rows([b.pool_manifest])
    dedup = read_manifest([b.dedup_manifest], DEDUP, ["id", "keep"]).to_pylist()
    kept = {r["id"] for r in dedup if r["keep"]}
    safe = [r for r in read_image_rows([b.safe_manifest]) if r["id"] in kept]
    curated = {r["id"]: r for r in read_image_rows([b.lvd_manifest])}
    methods = {r["id"]: set(r["methods"]) for r in read_manifest([b.lvd_manifest], LVD).to_pylist()}
    by_method = {m: [curated[i] for i, ms in methods.items() if m in ms]
                 for m in ("sample", "cluster", "balanced")}  # fmt: skip
    half = take(by_method["balanced"])[: size // 2]
    taken = {r["id"] for r in half}
    rest = [r for r in by_method["sample"] if r["id"] not in taken]
    chosen = {
        "uncurated": take(crawled),
        "dedup_random": take(safe),
        "sample": take(by_method["sample"]),
        "cluster": take(by_method["cluster"]),
        "balanced": take(by_method["balanced"]),
        "mix": half + [rest[i] for i in rng.permutation(len(rest))[: size - len(half)]],
    }
    return {arm: chosen[arm] for arm in which}


# -- measures --------------------------------------------------------------------------


def composition(rows: list[dict], meta: dict[str, dict], url_of: dict[str, str],
                fine: np.ndarray, n_fine: int, zipf: list[int]) -> dict[str, float]:  # fmt: skip
    """Label entropy / log 10 (of the on-topic images), off-topic and near-duplicate
    shares, the fine clusters covered (of k-means clusters of the held-out pixels), the
    share of the five rarest pool classes."""
    info = [meta[url_of[r["id"]].rsplit("/", 1)[1]] for r in rows]
    labels = np.array([m["label"] for m in info if m["label"] >= 0], dtype=np.int64)
    p = np.bincount(labels, minlength=CLASSES) / max(len(labels), 1)
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum() / np.log(CLASSES)
    sources = [m["source"] for m in info if m["source"] >= 0]
    _, counts = np.unique(sources, return_counts=True)
    return {"images": len(rows), "label_entropy": round(float(entropy), 3),
            "off_topic_share": round(sum(m["kind"] == "off_topic" for m in info) / len(info), 3),
            "near_duplicate_share": round(float((counts - 1).sum()) / len(info), 3),
            "fine_cluster_coverage": round(len(set(fine[sources].tolist())) / n_fine, 3),
            "tail5_share": round(float(np.isin(labels, zipf[5:]).sum()) / len(info), 3),
            }  # fmt: skip


def train_arm(rows: list[dict], run: Path, setup: Setup, seed: int) -> Path:
    run.parent.mkdir(parents=True, exist_ok=True)
    listed = [{"id": f"{r['id']}#{i}", **row_location(r), "label": None}
              for i, r in enumerate(rows)]  # fmt: skip
    manifest = write_image_manifest(listed, run.with_suffix(".parquet"))
    if not (run / "teacher_backbone.pth").exists():
        config = load_config(TrainConfig, None, RECIPE + schedule(setup.iterations)
                             + [f"seed={seed}", "checkpoint_every=1000000"])  # fmt: skip
        train(config, [str(manifest)], run, progress=False)
    return run


def knn_scores(run: Path, bank: Path, test: Path, zipf: list[int],
               control_seen: list[int]) -> dict[str, float]:  # fmt: skip
    """k-NN (k = 20, T = 0.07, dinov2's vote) of the test split against the bank."""
    backbone = load_backbone(run, None, 7)
    (xb, yb), (xt, yt) = (extract(backbone, [str(m)], 28, 256, 2) for m in (bank, test))
    xb, xt = torch.nn.functional.normalize(xb, dim=1), torch.nn.functional.normalize(xt, dim=1)
    sims, idx = (xt @ xb.T).topk(20, dim=1)
    votes = torch.nn.functional.one_hot(yb[idx], CLASSES) * (sims / 0.07).exp()[..., None]
    predicted = votes.sum(1).argmax(1).numpy()
    truth = yt.numpy()
    recall = np.array([(predicted[truth == c] == c).mean() for c in range(CLASSES)])
    unseen = [c for c in range(CLASSES) if c not in control_seen]
    return {"knn_top1": round(100 * float((predicted == truth).mean()), 2),
            "balanced_accuracy": round(100 * float(recall.mean()), 2),
            "tail5_accuracy": round(100 * float(recall[zipf[5:]].mean()), 2),
            "seen_accuracy": round(100 * float(recall[control_seen].mean()), 2),
            "unseen_accuracy": round(100 * float(recall[unseen].mean()), 2)}  # fmt: skip


# -- report ----------------------------------------------------------------------------

MEASURES = ("label_entropy", "off_topic_share", "near_duplicate_share", "fine_cluster_coverage",
            "knn_top1", "balanced_accuracy", "tail5_accuracy", "seen_accuracy",
            "unseen_accuracy")  # fmt: skip


def write_html(result: dict, path: Path) -> None:
    rows = result["arms"]
    header = "".join(f"<th>{m}</th>" for m in ("row", "arm", *MEASURES))
    body = ""
    for r in rows:
        cells = "".join(f"<td>{_fmt(r, m)}</td>" for m in MEASURES)
        body += f"<tr><td>{r['row']}</td><td>{r['arm']}</td>{cells}</tr>"
    plots = "".join(_bars(rows, m) for m in MEASURES)
    targets = "".join(f"<li>{html.escape(k)}: {html.escape(json.dumps(v))}</li>"
                      for k, v in result["targets"].items())  # fmt: skip
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>curation value</title><style>"
        "body{font:14px system-ui;margin:2em}td,th{padding:.2em .6em;text-align:right}"
        "svg{margin:1em}</style><h1>Curated vs uncurated (Fashion-MNIST web)</h1>"
        f"<pre>{html.escape(json.dumps(result['setup']))}</pre><table><tr>{header}</tr>{body}"
        f"</table><h2>Targets</h2><ul>{targets}</ul><h2>Measures</h2>{plots}"
    )


def _fmt(r: dict, m: str) -> str:
    if m not in r:
        return "-"
    spread = r.get(f"{m}_spread")
    return f"{r[m]}" + (f" &plusmn; {spread}" if spread else "")


def _bars(rows: list[dict], measure: str, width: int = 520) -> str:
    values = [(f"{r['row']}/{r['arm']}", r[measure]) for r in rows if measure in r]
    if not values:
        return ""
    top = max(max(v for _, v in values), 1e-9)
    bars = "".join(
        f'<text x="0" y="{18 * i + 30}" font-size="11">{html.escape(name)}</text>'
        f'<rect x="170" y="{18 * i + 20}" height="13" width="{(width - 230) * v / top:.0f}" '
        f'fill="#4a7bd0"/><text x="{175 + (width - 230) * v / top:.0f}" y="{18 * i + 30}" '
        f'font-size="11">{v}</text>'
        for i, (name, v) in enumerate(values)
    )
    return (f'<svg width="{width}" height="{18 * len(values) + 30}"><text x="0" y="12" '
            f'font-weight="bold">{measure}</text>{bars}</svg>')  # fmt: skip


# -- the experiment --------------------------------------------------------------------


def summarize(per_seed: list[dict]) -> dict:
    """Mean of each measure over seeds, and its spread (max - min)."""
    out = dict(per_seed[0])
    for key, value in per_seed[0].items():
        if isinstance(value, float) and len(per_seed) > 1:
            values = [p[key] for p in per_seed]
            out[key] = round(float(np.mean(values)), 3)
            out[f"{key}_spread"] = round(float(np.max(values) - np.min(values)), 3)
    return out


def targets(rows: list[dict]) -> dict[str, Any]:
    """The issue's targets, each with the figures that decide it."""
    at = {(r["row"], r["arm"]): r for r in rows}
    base = at[("vit", "uncurated")]
    best = max((at[("vit", a)] for a in ("sample", "cluster")), key=lambda r: r["knn_top1"])

    def win(a: dict, b: dict, key: str, margin: float) -> bool:
        spread = max(a.get(f"{key}_spread", 0), b.get(f"{key}_spread", 0))
        return a[key] - b[key] >= margin and a[key] - b[key] > 2 * spread

    balanced, mix = at[("vit", "balanced")], at[("vit", "mix")]
    return {
        "retrieval_knn_plus_5": {"met": win(best, base, "knn_top1", 5), "best": best["arm"],
                                 "best_knn": best["knn_top1"], "uncurated_knn": base["knn_top1"]},
        "retrieval_tail_plus_10": {"met": win(best, base, "tail5_accuracy", 10),
                                   "best_tail": best["tail5_accuracy"],
                                   "uncurated_tail": base["tail5_accuracy"]},
        "balanced_entropy_0.95": {"met": balanced["label_entropy"] >= 0.95
                                  and base["label_entropy"] <= 0.75,
                                  "balanced": balanced["label_entropy"],
                                  "pool": base["label_entropy"]},
        "balanced_off_topic_third": {"met": balanced["off_topic_share"]
                                     <= base["off_topic_share"] / 3,
                                     "balanced": balanced["off_topic_share"],
                                     "pool": base["off_topic_share"]},
        "mix_at_least_its_parts": {"met": mix["knn_top1"] >= max(balanced["knn_top1"],
                                                                 at[("vit", "sample")]["knn_top1"])
                                   - max(mix.get("knn_top1_spread", 0), 0),
                                   "mix": mix["knn_top1"], "balanced": balanced["knn_top1"],
                                   "sample": at[("vit", "sample")]["knn_top1"]},
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-bench-curation-value"))
    p.add_argument("--size", type=int, default=Setup.size, help="images per arm")
    p.add_argument("--iterations", type=int, default=Setup.iterations, help="per training run")
    p.add_argument("--seeds", type=int, default=Setup.seeds, help="training runs per arm")
    p.add_argument("--pool-per-class", type=int, default=Setup.pool_per_class,
                   help="images of the Zipf head class")  # fmt: skip
    p.add_argument("--embedder-iterations", type=int, default=Setup.embedder_iterations)
    p.add_argument("--test-images", type=int, default=Setup.test_images)
    args = parse_with_quick(p, {"workdir": Path("/tmp/lvd-bench-curation-value-quick"),
                                "size": 120, "iterations": 10, "seeds": 1,
                                "pool_per_class": 300, "embedder_iterations": 10,
                                "test_images": 300})  # fmt: skip
    setup = Setup(pool_per_class=args.pool_per_class, size=args.size, iterations=args.iterations,
                  seeds=args.seeds, embedder_iterations=args.embedder_iterations,
                  test_images=args.test_images)  # fmt: skip
    if args.quick:
        setup.seeds_per_class, setup.bank_per_class, setup.embedder_per_class = 20, 30, 60
    ensure_dataset()
    started = time.perf_counter()
    work = args.workdir
    for stale in [*work.glob("build-*"), work / "runs"]:  # the web's port, so its URLs, change
        shutil.rmtree(stale, ignore_errors=True)
    rng = np.random.default_rng(0)
    data = splits(setup, rng)
    zipf = data["zipf_order"]
    meta = write_web(work / "site", data, setup, rng)
    seeds_root = write_folder(work / "seeds", data, data["seeds"])
    seen = sorted(zipf[r] for r in range(CLASSES) if r not in UNSEEN_RANKS)
    in_seen = np.isin(data["labels"][data["seeds"]], seen)
    control_root = write_folder(work / "seeds_control", data, data["seeds"][in_seen])
    bank = write_labelled(work / "bank", data["images"][data["bank"]],
                          data["labels"][data["bank"]])  # fmt: skip
    test = write_labelled(work / "test", data["test_images"], data["test_labels"])
    held = write_labelled(work / "embedder_split", data["images"][data["embedder"]],
                          data["labels"][data["embedder"]])  # fmt: skip

    embedder_run = work / "embedder"  # the curation ViT, on the held-out split
    if not (embedder_run / "teacher_backbone.pth").exists():
        config = load_config(TrainConfig, None, RECIPE + schedule(setup.embedder_iterations)
                             + ["checkpoint_every=1000000"])  # fmt: skip
        train(config, [str(held)], embedder_run, progress=False)

    pixels = data["images"].reshape(len(data["images"]), -1).astype(np.float32) / 255
    n_fine = 100
    centroids, _ = kmeans(pixels[data["embedder"]], KMeansConfig(k=n_fine, spherical=False))
    fine = np.full(len(pixels), -1)
    fine[data["pool"]] = assign(pixels[data["pool"]], centroids, spherical=False)[0]

    with serve_in_process(work / "site") as port:
        urls = work / "urls.txt"
        urls.write_text("".join(f"http://127.0.0.1:{port}/{name}\n" for name in sorted(meta)))
        builds = {
            "efficientnet": build(
                work / "build-efficientnet", recipe(urls, seeds_root, "efficientnet_lite0", setup)
            ),
        }
        builds["vit"] = build(
            work / "build-vit",
            recipe(urls, seeds_root, f"vit:{embedder_run}", setup),
            work / "build-efficientnet",
        )
        builds["control"] = build(
            work / "build-control",
            recipe(urls, control_root, f"vit:{embedder_run}", setup),
            work / "build-vit",
        )
    url_of = _urls(builds["vit"])

    plan = {"vit": ARMS, "efficientnet": RETRIEVAL_ARMS, "control": SEEDED_ARMS}
    rows = []
    for row, which in plan.items():
        for arm, chosen in arms(builds[row], setup.size, np.random.default_rng(1), which).items():
            measured = composition(chosen, meta, url_of, fine, n_fine, zipf)
            runs = []
            for seed in range(setup.seeds):
                run = train_arm(chosen, work / "runs" / f"{row}-{arm}-{seed}", setup, seed)
                runs.append(measured | knn_scores(run, bank, test, zipf, seen))
            rows.append({"row": row, "arm": arm, **summarize(runs)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"setup": {**vars(setup), "zipf_order": zipf, "control_seen": seen,
                        "pool_images": len(meta), "minutes": None},
              "arms": rows, "targets": targets(rows)}  # fmt: skip
    result["setup"]["minutes"] = round((time.perf_counter() - started) / 60, 1)
    write_html(result, work / "curation_value.html")
    print(json.dumps(result, indent=1))


def _urls(b: BuildLayout) -> dict[str, str]:
    """Pool image id -> the URL it was crawled from (the web's file names say what it is)."""
    table = read_manifest([b.pool_manifest], POOL, ["id", "url"])
    return dict(zip(table.column("id").to_pylist(), table.column("url").to_pylist(), strict=True))


if __name__ == "__main__":
    main()
