"""The embedded demo: a small web on loopback, crawled end to end with no internet.

``python -m pipelines.demo [--out DIR]`` serves pages that link generated photos (with
exact duplicates, near-duplicates, broken links and hostile responses), records the
pages in a WARC as a web crawl would, runs the crawl stage on that WARC, then hash
dedup of the pool (exact and perceptual copies; the copy-detection level needs real photos
and is left to ``pipelines.embed`` + ``pipelines.dedup --embeddings``).
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import sys
from pathlib import Path

import cv2
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.crawl.config import CrawlConfig
from curation.crawl.crawler import CrawlSummary, run_crawl
from curation.dedup.stage import DedupConfig, run_dedup
from pipelines.crawl import format_summary
from pipelines.loopback_web import LoopbackWeb, Route
from pipelines.synthetic_images import encode, make_photo

MARKER = ".lvd-demo"
IMAGES_PER_PAGE = 8


def demo_routes(n_images: int = 48) -> tuple[dict[str, Route], list[str]]:
    """Routes of the demo web and the paths of its HTML pages."""
    routes: dict[str, Route] = {}
    links: list[str] = []
    for i in range(n_images):
        photo = make_photo(i)
        fmt, ext, ctype = [
            ("JPEG", "jpg", "image/jpeg"),
            ("PNG", "png", "image/png"),
            ("WEBP", "webp", "image/webp"),
        ][i % 3]
        path = f"/img/{i:03d}.{ext}"
        routes[path] = Route(body=encode(photo, fmt), content_type=ctype)
        links.append(path)
        if i % 8 == 0:  # the same bytes under a second URL: an exact duplicate
            routes[f"/mirror/{i:03d}.{ext}"] = routes[path]
            links.append(f"/mirror/{i:03d}.{ext}")
        if i % 8 == 4:  # smaller, recompressed: a near-duplicate
            small = cv2.resize(photo, (480, 360), interpolation=cv2.INTER_AREA)
            routes[f"/img/{i:03d}-small.jpg"] = Route(body=encode(small, quality=70))
            links.append(f"/img/{i:03d}-small.jpg")
    full = encode(make_photo(10_000))
    hostile = {
        "/img/server-error.jpg": Route(status=500, body=b"oops", content_type="text/plain"),
        "/img/truncated.jpg": Route(body=full[: len(full) // 3]),
        "/img/not-really.jpg": Route(body=b"<html><body>a page</body></html>"),
        "/img/icon.png": Route(body=encode(make_photo(1, 32, 32), "PNG"), content_type="image/png"),
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


def run_demo(out: Path, progress: bool = True) -> tuple[CrawlSummary, dict]:
    """Crawl the demo web into ``out/crawl``, then dedup the pool into ``out/dedup``;
    returns the crawl summary and the dedup stats."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists and is not a demo directory; choose another --out")
    shutil.rmtree(out, ignore_errors=True)  # the web's port changes, so URLs do too
    out.mkdir(parents=True)
    (out / MARKER).touch()
    routes, pages = demo_routes()
    config = CrawlConfig(shard_size=32)
    config.fetch.allowed_networks = ["127.0.0.0/8"]  # the demo web lives on loopback
    config.fetch.max_retries = 1
    config.fetch.backoff_base_s = 0.05
    config.process.max_side = 512
    with LoopbackWeb(routes) as web:
        warc = out / "inputs" / "pages.warc.gz"
        write_warc(warc, web, pages)
        summary = run_crawl([warc], out / "crawl", config, progress=progress)
    pool = out / "crawl" / "manifest" / "pool"
    return summary, run_dedup([pool], out / "dedup", config=DedupConfig(), progress=progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/demo", type=Path)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    summary, dedup = run_demo(args.out, progress=not args.no_progress)
    print(format_summary(summary))
    funnel = ", ".join(f"{k} {v}" for k, v in dedup["funnel"].items())
    print(f"dedup ({args.out / 'dedup'}): {funnel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
