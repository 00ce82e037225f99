"""The embedded demo: ``python -m pipelines.build_lvd --demo [--out DIR] [--engine ...]``.

Serves a small web on loopback: pages linking photos (real ones from scikit-image and
Debian image packages where installed, generated ones otherwise) with exact duplicates,
near-duplicates, edited copies, broken links and hostile responses. Records the pages in
a WARC as a web crawl would, writes two small seed sets and an evaluation set, runs the
whole build (``configs/curation/demo.yaml``) on CPU, trains a few steps of the tiny recipe
on the LVD manifest, and says where the report is.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from manifests.config import load_config
from pipelines.build import format_results, run_build
from pipelines.build_layout import BuildLayout
from pipelines.curation_config import CurationConfig
from pipelines.demo.loopback_web import LoopbackWeb, Route
from pipelines.demo.near_duplicates import edited_copy
from pipelines.demo.photos import real_photos
from pipelines.demo.synthetic_images import make_photo
from pipelines.engines import make_engine
from training.config import TrainConfig
from training.train import train

MARKER = ".lvd-demo"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "curation" / "demo.yaml"
TRAIN_CONFIG = CONFIG.parent.parent / "train" / "tiny_cpu.yaml"
N_PHOTOS = 112
IMAGES_PER_PAGE = 8
FORMATS = [("JPEG", "jpg", "image/jpeg"), ("PNG", "png", "image/png"),
           ("WEBP", "webp", "image/webp")]  # fmt: skip


def demo_photos(n: int = N_PHOTOS) -> list[Image.Image]:
    """``n`` distinct photos: real ones first, generated ones for the rest."""
    photos = list(real_photos(512, min_side=128, limit=n).values())
    photos += [Image.fromarray(make_photo(i)) for i in range(n - len(photos))]
    return photos


def _encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}) | params)
    return buf.getvalue()


def demo_routes(photos: list[Image.Image]) -> tuple[dict[str, Route], list[str]]:
    """Routes of the demo web and the paths of its HTML pages."""
    routes: dict[str, Route] = {}
    links: list[str] = []
    for i, photo in enumerate(photos):
        fmt, ext, ctype = FORMATS[i % 3]
        path = f"/img/{i:03d}.{ext}"
        routes[path] = Route(body=_encode(photo, fmt), content_type=ctype)
        links.append(path)
        copies = {
            0: (f"/mirror/{i:03d}.{ext}", routes[path]),  # the same bytes: an exact duplicate
            4: (f"/img/{i:03d}-small.jpg", Route(body=_encode(  # a near-exact duplicate
                photo.resize((photo.width // 2, photo.height // 2)), quality=70))),
            2: (f"/img/{i:03d}-crop.jpg", Route(body=_encode(edited_copy(photo, "crop", i)))),
            6: (f"/img/{i:03d}-text.jpg", Route(body=_encode(edited_copy(photo, "text", i)))),
        }  # fmt: skip
        if i % 8 in copies:
            copy_path, route = copies[i % 8]
            routes[copy_path] = route
            links.append(copy_path)
    full = _encode(photos[0])
    hostile = {
        "/img/server-error.jpg": Route(status=500, body=b"oops", content_type="text/plain"),
        "/img/truncated.jpg": Route(body=full[: len(full) // 3]),
        "/img/not-really.jpg": Route(body=b"<html><body>a page</body></html>"),
        "/img/icon.png": Route(
            body=_encode(photos[1].resize((32, 32)), "PNG"), content_type="image/png"
        ),  # fmt: skip
        "/img/noai.jpg": Route(body=full, headers={"X-Robots-Tag": "noai"}),
    }
    routes.update(hostile)
    links += [*hostile, "/img/gone.jpg"]  # the last one is a broken link (404)
    pages = []
    for p in range(0, len(links), IMAGES_PER_PAGE):
        page = f"/pages/{p // IMAGES_PER_PAGE:02d}.html"
        tags = [_img_tag(link, k) for k, link in enumerate(links[p : p + IMAGES_PER_PAGE])]
        tags.append(_img_tag(links[0], 0))  # every page shows the site logo: a repeated URL
        body = f"<html><body><h1>Demo page</h1>{''.join(tags)}</body></html>"
        routes[page] = Route(body=body.encode(), content_type="text/html")
        pages.append(page)
    return routes, pages


def _img_tag(link: str, k: int) -> str:
    relative = "../" + link.lstrip("/")  # pages live in /pages/
    if k % 3 == 1:
        return f'<img data-src="{relative}" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
    if k % 3 == 2:
        return f'<img srcset="{relative} 2x, /thumbs/none.jpg 1x">'
    return f'<img src="{relative}" alt="">'


def write_warc(path: Path, web: LoopbackWeb, pages: list[str]) -> None:
    """Record the pages as HTTP responses in a gzipped WARC, as a web crawl would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for page in pages:
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1"
            )
            record = writer.create_warc_record(
                web.url(page),
                "response",
                payload=io.BytesIO(web.routes[page].body),
                http_headers=headers,
            )
            writer.write_record(record)


def write_seed_sets(root: Path, photos: list[Image.Image]) -> dict[str, str]:
    """Image folders (ROOT/<class>/*.jpg) of edited views of some pool photos: a sample
    set, a cluster set, and an evaluation set whose pool copies must be dropped."""
    plans = {
        "demo_sample": [(i, "colour") for i in (1, 5, 9, 13, 17, 21)],
        "demo_cluster": [(i, "flip") for i in range(3, 40, 4)],
        "demo_eval": [(i, "jpeg") for i in (7, 15)],
    }
    roots = {}
    for name, views in plans.items():
        for i, transform in views:
            if i < len(photos):
                path = root / name / f"class{i:03d}" / f"{i:03d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_encode(edited_copy(photos[i], transform, 1000 + i)))
        roots[name] = str(root / name)
    return roots


@contextlib.contextmanager
def demo_web(inputs: Path, n_photos: int = N_PHOTOS) -> Iterator[CurationConfig]:
    """Serve the demo web while in the block; yields the recipe that builds from it (its
    WARC and seed sets written under ``inputs``)."""
    photos = demo_photos(n_photos)
    config = load_config(CurationConfig, CONFIG)
    config.seeds.roots.update(write_seed_sets(inputs / "seeds", photos))
    routes, pages = demo_routes(photos)
    with LoopbackWeb(routes) as web:
        warc = inputs / "pages.warc.gz"
        write_warc(warc, web, pages)
        config.urls = [str(warc)]
        yield config


def run_demo(out: Path, engine_name: str = "local", progress: bool = True) -> str:
    """Build the demo into ``out`` (replacing an earlier demo there), then train a few
    steps on its LVD manifest; returns the summary to print."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists and is not a demo directory; choose another --out")
    shutil.rmtree(out, ignore_errors=True)  # the web's port changes, so URLs do too
    out.mkdir(parents=True)
    (out / MARKER).touch()
    build = BuildLayout(out / "build")
    engine = make_engine(engine_name)
    try:
        with demo_web(out / "inputs") as config:
            results = run_build(build.out, config, engine, progress=progress)
    finally:
        engine.close()
    steps = ["epochs=1", "iters_per_epoch=4", "log_every=2", "data.batch_size=8"]
    train_config = load_config(TrainConfig, TRAIN_CONFIG, steps)
    metrics = train(train_config, [build.lvd_manifest], out / "train", progress=progress)
    return (format_results(build, results)
            + f"\n  trained {metrics.get('iteration')} steps of {TRAIN_CONFIG.name} on the LVD "
            f"manifest: loss {metrics.get('loss')} -> {out / 'train'}")  # fmt: skip
