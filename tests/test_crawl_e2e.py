"""The crawl stage end to end against a real HTTP server on loopback with hostile endpoints."""

from __future__ import annotations

import hashlib
import io
import json

import cv2
import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from builders import gzipped, jpeg_with_orientation, png_declaring, small_crawl_config
from curation.crawl.crawler import run_crawl
from curation.crawl.errors import CrawlError
from curation.crawl.urls import normalize_url
from manifests.image_shards import ImageShardReader, tar_shard_path
from manifests.parquet_io import read_manifest
from manifests.schemas import POOL
from pipelines.demo.loopback_web import LoopbackWeb, Route
from pipelines.demo.synthetic_images import encode, make_photo

PHOTO = make_photo(1)
FULL = encode(PHOTO)
SMALL = encode(cv2.resize(PHOTO, (200, 150), interpolation=cv2.INTER_AREA))

# path -> (route, expected status or error code)
CASES: dict[str, tuple[Route, str]] = {
    "/ok.jpg": (Route(body=FULL), "ok"),
    "/ok.png": (Route(body=encode(PHOTO, "PNG"), content_type="image/png"), "ok"),
    "/ok.webp": (Route(body=encode(PHOTO, "WEBP"), content_type="image/webp"), "ok"),
    "/ok.gif": (Route(body=encode(PHOTO, "GIF"), content_type="image/gif"), "ok"),
    "/small.jpg": (Route(body=SMALL), "ok"),
    "/rotated.jpg": (Route(body=jpeg_with_orientation(PHOTO, 6)), "ok"),
    "/gzip.jpg": (Route(body=gzipped(FULL), headers={"Content-Encoding": "gzip"}), "ok"),
    "/otherbot-noai.jpg": (Route(body=FULL, headers={"X-Robots-Tag": "otherbot: noai"}), "ok"),
    "/429-then-ok.jpg": (
        Route(body=FULL, fail_first=1, fail_status=429, fail_headers={"Retry-After": "1"}),
        "ok",
    ),
    "/503-then-ok.jpg": (Route(body=FULL, fail_first=1, fail_status=503), "ok"),
    "/redirect-to-ok": (Route(status=302, headers={"Location": "/ok.jpg"}), "ok"),
    "/server-error.jpg": (Route(status=500, body=b"boom", content_type="text/plain"), "http_5xx"),
    "/unavailable.jpg": (Route(status=503, body=b"busy", content_type="text/plain"), "http_5xx"),
    "/forbidden.jpg": (Route(status=403, body=b"no", content_type="text/plain"), "http_4xx"),
    "/slow-drip.jpg": (Route(body=FULL[:400], drip_interval_s=0.05), "timeout"),
    "/endless.jpg": (Route(body=b"\xff" * 65536, endless=True), "too_large"),
    "/declared-too-big.jpg": (Route(body=b"\xff" * 2_100_000), "too_large"),  # Content-Length
    "/gzip-bomb.jpg": (
        Route(body=gzipped(b"\0" * 50_000_000), headers={"Content-Encoding": "gzip"}),
        "too_large",
    ),
    "/brotli.jpg": (Route(body=FULL, headers={"Content-Encoding": "br"}), "unsupported_encoding"),
    "/bomb.png": (
        Route(body=png_declaring(20000, 20000), content_type="image/png"),
        "too_many_pixels",
    ),
    "/truncated.jpg": (Route(body=FULL[: len(FULL) // 2]), "decode_error"),
    "/html-as.jpg": (Route(body=b"<!doctype html><html><body>hi</body></html>"), "not_image"),
    "/tiny.png": (
        Route(body=encode(make_photo(2, 40, 30), "PNG"), content_type="image/png"),
        "too_small",
    ),
    "/wide.png": (
        Route(body=encode(make_photo(3, 640, 100), "PNG"), content_type="image/png"),
        "bad_aspect",
    ),
    "/noai.jpg": (Route(body=FULL, headers={"X-Robots-Tag": "noai"}), "robots_directive"),
    "/noimageindex.jpg": (
        Route(body=FULL, headers={"X-Robots-Tag": "lvd-builder: noimageindex"}),
        "robots_directive",
    ),
    "/loop-a": (Route(status=302, headers={"Location": "/loop-b"}), "too_many_redirects"),
    "/loop-b": (Route(status=301, headers={"Location": "/loop-a"}), "too_many_redirects"),
    "/redirect-to-metadata": (
        Route(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
        "blocked_private_address",
    ),
    "/redirect-to-ipv6-loopback": (
        Route(status=307, headers={"Location": "http://[::1]/x.jpg"}),
        "blocked_private_address",
    ),
    "/redirect-to-ftp": (
        Route(status=302, headers={"Location": "ftp://example.org/x.jpg"}),
        "unsupported_scheme",
    ),
    "/missing.jpg": (None, "http_4xx"),
}
for hop in range(7):  # /chain-k is 7 - k redirects away from an image; max_redirects is 5
    outcome = "ok" if 7 - hop <= 5 else "too_many_redirects"
    CASES[f"/chain-{hop}"] = (Route(status=302, headers={"Location": f"/chain-{hop + 1}"}), outcome)
CASES["/chain-7"] = (Route(body=FULL), "ok")


@pytest.fixture(scope="module")
def hostile_web():
    routes = {path: route for path, (route, _) in CASES.items() if route is not None}
    with LoopbackWeb(routes) as web:
        yield web


def _other_urls(web: LoopbackWeb) -> dict[str, str]:
    """URLs whose outcome is decided before or around the connection."""
    return {
        "http://images.blocked-site.test/a.jpg": "blocked_domain",
        f"http://2130706433:{web.port}/ok.jpg?numeric": "ok",  # 127.0.0.1 as one number
        f"http://localhost:{web.port}/ok.jpg?by-name": "ok",
        f"http://[::1]:{web.port}/ok.jpg": "blocked_private_address",  # not in 127.0.0.0/8
        "http://10.0.0.1/x.jpg": "blocked_private_address",
        "ftp://example.org/a.jpg": "unsupported_scheme",
        "not a url at all": "invalid_url",
    }


@pytest.fixture(scope="module")
def crawled(hostile_web, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crawl")
    config = small_crawl_config()
    (tmp / "blocklist.txt").write_text("# test blocklist\nblocked-site.test\n")
    config.fetch.domain_blocklist = str(tmp / "blocklist.txt")
    expected = {hostile_web.url(p): outcome for p, (_, outcome) in CASES.items()}
    expected.update(_other_urls(hostile_web))
    urls = list(expected) + [hostile_web.url("/ok.jpg"), hostile_web.url("/ok.jpg#fragment")]
    (tmp / "urls.txt").write_text("\n".join(urls) + "\n")
    summary = run_crawl([tmp / "urls.txt"], tmp / "out", config, progress=False)
    table = read_manifest([tmp / "out" / "manifest" / "pool"], POOL)
    return summary, table, expected, tmp / "out"


def test_every_url_has_its_exact_outcome(crawled):
    _, table, expected, _ = crawled
    rows = {r["url"]: r for r in table.to_pylist()}
    got = {}
    for url in expected:
        row = rows[_normalized(url)]
        got[url] = "ok" if row["status"] == "ok" else row["error_code"]
    assert got == expected


def _normalized(url: str) -> str:
    try:
        return normalize_url(url)
    except CrawlError:
        return url


def test_one_row_per_unique_url_and_counts_reconcile(crawled):
    summary, table, expected, out = crawled
    assert table.num_rows == len(expected) == summary.urls
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    assert summary.duplicates_removed == 2  # the repeated URL and the one differing by fragment
    stats = json.loads((out / "stats.json").read_text())
    assert stats["ok"] + stats["error"] == table.num_rows
    assert stats["error_codes"] == summary.error_codes
    assert sum(s["rows"] for s in stats["shards"]) == table.num_rows
    ok = pc.sum(pc.equal(table.column("status"), "ok")).as_py()
    assert ok == stats["ok"] == sum(1 for v in expected.values() if v == "ok")


def test_ok_rows_have_their_image_in_their_shard(crawled):
    _, table, _, out = crawled
    for row in table.to_pylist():
        if row["status"] != "ok":
            assert row["key"] is None and row["sha256"] is None
            continue
        with ImageShardReader(tar_shard_path(out / "shards", row["shard"])) as reader:
            data = reader.read(row["key"])
            meta = reader.meta(row["key"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"] == meta["sha256"]
        assert len(data) == row["bytes"]
        image = Image.open(io.BytesIO(data))
        assert image.size == (row["width"], row["height"]) and image.mode == "RGB"
        assert max(image.size) <= 320


def test_image_processing_outcomes(crawled, hostile_web):
    _, table, _, _ = crawled
    rows = {r["url"]: r for r in table.to_pylist()}
    ok = rows[hostile_web.url("/ok.jpg")]
    assert (ok["original_width"], ok["original_height"], ok["width"], ok["height"]) == (
        640,
        480,
        320,
        240,
    )
    rotated = rows[hostile_web.url("/rotated.jpg")]
    assert (rotated["original_width"], rotated["original_height"]) == (480, 640)
    assert (rotated["width"], rotated["height"]) == (240, 320)
    small = rows[hostile_web.url("/small.jpg")]  # nothing to change: the original bytes are kept
    assert small["sha256"] == hashlib.sha256(SMALL).hexdigest()
    assert rows[hostile_web.url("/missing.jpg")]["http_status"] == 404
    assert rows[hostile_web.url("/server-error.jpg")]["http_status"] == 500


def test_retries_and_retry_after(crawled, hostile_web):
    assert hostile_web.hits["/unavailable.jpg"] == 3  # first try + max_retries
    assert hostile_web.hits["/server-error.jpg"] == 1  # a 500 is the server's bug: final
    assert hostile_web.hits["/forbidden.jpg"] == 1  # 4xx other than 429 is final
    first, second = hostile_web.hit_times["/429-then-ok.jpg"][:2]
    assert second - first >= 0.95  # Retry-After: 1 honoured
    assert hostile_web.hits["/503-then-ok.jpg"] == 2


def test_loopback_refused_without_the_flag(hostile_web, tmp_path, crawl_config):
    crawl_config.fetch.allowed_networks = []
    (tmp_path / "urls.txt").write_text(
        "\n".join(
            [
                hostile_web.url("/ok.png?no-flag"),
                f"http://localhost:{hostile_web.port}/ok.png?no-flag",
            ]
        )
    )
    before = hostile_web.hits["/ok.png?no-flag"]
    run_crawl([tmp_path / "urls.txt"], tmp_path / "out", crawl_config, progress=False)
    table = read_manifest([tmp_path / "out" / "manifest" / "pool"], POOL)
    assert table.column("error_code").to_pylist() == ["blocked_private_address"] * 2
    assert hostile_web.hits["/ok.png?no-flag"] == before == 0


def test_allow_private_networks_flag_reaches_loopback(hostile_web, tmp_path, crawl_config):
    crawl_config.fetch.allowed_networks = []
    crawl_config.fetch.allow_private_networks = True
    (tmp_path / "urls.txt").write_text(hostile_web.url("/ok.webp") + "\n")
    summary = run_crawl([tmp_path / "urls.txt"], tmp_path / "out", crawl_config, progress=False)
    assert summary.ok == 1


def test_pixels_survive_processing(crawled, hostile_web):
    _, table, _, out = crawled
    row = next(r for r in table.to_pylist() if r["url"] == hostile_web.url("/ok.png"))
    with ImageShardReader(tar_shard_path(out / "shards", row["shard"])) as reader:
        stored = np.asarray(Image.open(io.BytesIO(reader.read(row["key"]))))
    reference = cv2.resize(PHOTO, (320, 240), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(stored.astype(float) - reference).mean() < 3.0  # JPEG q95 of the same pixels


def test_crawling_in_this_process_restores_opencv_threads(tmp_path, crawl_config, jpeg):
    with LoopbackWeb({"/a.jpg": Route(body=jpeg)}) as web:
        (tmp_path / "urls.txt").write_text(web.url("/a.jpg"))
        crawl_config.processes = 1  # the one shard is crawled here, not in a worker
        cv2.setNumThreads(3)
        run_crawl([tmp_path / "urls.txt"], tmp_path / "out", crawl_config, progress=False)
    assert cv2.getNumThreads() == 3
