"""Crawling one shard: download, process and commit its URLs in the calling process.

:func:`crawl_shard` is the unit an engine schedules. It downloads on an event loop and
decodes/resizes on a few threads beside it (Pillow and OpenCV release the GIL), then
commits the shard; image bytes never cross a process boundary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curation.crawl.config import CrawlConfig
from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.fetch import Fetcher
from curation.crawl.pixel_threads import PixelThreads
from curation.crawl.process import init_worker, keep_opencv_threads, process_image
from curation.crawl.urls import PlannedUrl
from curation.tasks import ItemCounter
from manifests.crawl_output import CrawlOutput, ShardStats
from manifests.image_shards import ImageShardWriter

log = logging.getLogger(__name__)


# libuv's event loop where installed (all but Windows): less of the loop thread's CPU per
# image than asyncio's own
try:
    from uvloop import run as _run_event_loop
except ImportError:
    from asyncio import run as _run_event_loop


class ShardCrawler:
    """Turns planned URLs into pool rows and stored images."""

    def __init__(
        self, config: CrawlConfig, fetcher: Fetcher, pixels: PixelThreads, images: ImageShardWriter
    ) -> None:
        self.config = config
        self.fetcher = fetcher
        self.pixels = pixels
        self.images = images

    async def crawl_all(
        self, planned: list[PlannedUrl], shard: int, on_items: ItemCounter | None = None
    ) -> list[dict[str, Any]]:
        """The pool rows of ``planned``, in order, crawled ``fetch.concurrency`` at a time by
        as many coroutines (one task and no semaphore wait per URL)."""
        rows: list[dict[str, Any]] = [{}] * len(planned)
        todo = iter(enumerate(planned))

        async def crawl_next() -> None:
            for i, p in todo:
                rows[i] = await self.crawl_url(p, shard)
                if on_items is not None:
                    on_items(1, rows[i]["status"] == "ok")

        workers = min(self.config.fetch.concurrency, len(planned))
        await asyncio.gather(*(crawl_next() for _ in range(workers)))
        return rows

    async def crawl_url(self, planned: PlannedUrl, shard: int) -> dict[str, Any]:
        """The pool row of one URL; an ok row's image is already in the shard's tar."""
        row = _empty_row(planned, shard)
        try:
            if planned.error is not None:
                raise planned.error
            fetched = await self.fetcher.fetch(planned.url)
            row["http_status"] = fetched.http_status
            image = await self.pixels.run(process_image, fetched.body, self.config.process)
        except CrawlError as exc:
            return _failed(row, exc.code, exc.message, exc.http_status)
        except Exception as exc:  # never let one URL end the run
            log.exception("unexpected error on %s", planned.url)
            return _failed(row, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            row["fetch_time"] = datetime.now(UTC)
        row.update(
            status="ok",
            bytes=len(image.data),
            width=image.width,
            height=image.height,
            original_width=image.original_width,
            original_height=image.original_height,
            sha256=image.sha256,
            key=planned.id,
        )
        self.images.add(planned.id, image.data, sample_meta(row))
        return row


def _empty_row(planned: PlannedUrl, shard: int) -> dict[str, Any]:
    row = dict.fromkeys(
        ("error_code", "error_message", "http_status", "bytes", "original_width")
        + ("original_height", "width", "height", "sha256", "key", "fetch_time")
    )
    row.update(id=planned.id, url=planned.url, page_url=planned.page_url, shard=shard)
    return row


def _failed(row: dict[str, Any], code: ErrorCode, message: str, http_status=None) -> dict:
    row.update(status="error", error_code=code.value, error_message=message[:500])
    if http_status is not None:
        row["http_status"] = http_status
    return row


def sample_meta(row: dict[str, Any]) -> dict[str, Any]:
    """What the tar's ``KEY.json`` holds beside each image."""
    keys = ("id", "url", "page_url", "width", "height", "original_width", "original_height")
    return {k: row[k] for k in (*keys, "sha256")}


def count_codes(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(r["error_code"] for r in rows if r["error_code"] is not None))


def crawl_shard(
    index: int,
    planned: list[PlannedUrl],
    config: CrawlConfig,
    out_dir: str | Path,
    source: str,
    on_items: ItemCounter | None = None,
) -> ShardStats:
    """Crawl one shard's URLs in this process and commit it to ``out_dir``, its stats
    recording ``source`` (:func:`~curation.crawl.urls.shard_source`); returns the stats.
    ``on_items(1, ok)`` is called as each URL finishes."""
    with keep_opencv_threads():  # the process may do other work after this shard
        stats = _run_event_loop(_crawl_shard(index, planned, config, CrawlOutput(out_dir),
                                             source, on_items))  # fmt: skip
    log.info("shard %05d: %d/%d ok in %.1fs", stats.shard, stats.ok, stats.rows, stats.elapsed_s)
    return stats


async def _crawl_shard(
    index: int,
    planned: list[PlannedUrl],
    config: CrawlConfig,
    output: CrawlOutput,
    source: str,
    on_items: ItemCounter | None,
) -> ShardStats:
    start = time.perf_counter()
    init_worker()
    with (
        PixelThreads(config.threads_per_process) as pixels,
        output.image_writer(index) as images,
    ):
        async with Fetcher(config.fetch) as fetcher:
            rows = await ShardCrawler(config, fetcher, pixels, images).crawl_all(
                planned, index, on_items
            )
        stats = ShardStats(
            shard=index,
            rows=len(rows),
            ok=images.count,
            error_codes=count_codes(rows),
            stored_bytes=sum(r["bytes"] for r in rows if r["status"] == "ok"),
            elapsed_s=round(time.perf_counter() - start, 3),
            source=source,
        )
        output.commit(index, images, rows, stats, asdict(config))
    return stats
