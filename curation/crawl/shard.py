"""Crawling a lane of shards: download, process and commit their URLs in the calling
process.

:func:`crawl_lane` is the unit an engine schedules. It downloads on an event loop (a
:class:`~curation.crawl.frontier.Frontier`) and decodes/resizes on a few threads beside
it (Pillow and OpenCV release the GIL), committing each shard as its last URL finishes;
image bytes never cross a process boundary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from yarl import URL

from curation.crawl.config import CrawlConfig
from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.fetch import Fetched, Fetcher
from curation.crawl.frontier import Frontier, Job
from curation.crawl.pixel_threads import PixelThreads
from curation.crawl.process import (
    ProcessedImage,
    init_worker,
    keep_opencv_threads,
    process_image,
)
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


@dataclass(eq=False)
class _OpenShard:
    """A shard being crawled: its rows fill in as URLs finish; committed when all have."""

    index: int
    planned: list[PlannedUrl]
    source: str
    images: ImageShardWriter
    started: float
    rows: list[dict[str, Any]] = field(init=False)
    remaining: int = field(init=False)  # URLs not finished yet

    def __post_init__(self) -> None:
        self.rows = [_empty_row(p, self.index) for p in self.planned]
        self.remaining = len(self.planned)


class LaneCrawler:
    """Crawls a lane of shards on one :class:`Frontier`: each shard is committed when its
    last URL finishes, while the next shards' URLs keep the request slots full, so no
    shard waits on its slowest URL with the slots idle."""

    def __init__(self, config: CrawlConfig, fetcher: Fetcher, pixels: PixelThreads,
                 output: CrawlOutput, on_items: ItemCounter | None = None) -> None:  # fmt: skip
        self.config, self.fetcher, self.pixels, self.output = config, fetcher, pixels, output
        self.on_items = on_items
        self.stats: list[ShardStats] = []
        self.frontier = Frontier(fetcher, config.fetch, self._done)

    async def crawl(self, lane: list[tuple[int, list[PlannedUrl], str]]) -> list[ShardStats]:
        await self.frontier.run(self._jobs(lane))
        log.info("lane of %d shards: %d retries, %d circuit breakers opened, %d DNS queries",
                 len(lane), self.frontier.retries, self.frontier.breaker_trips,
                 self.fetcher.dns.lookups)  # fmt: skip
        return self.stats

    def _jobs(self, lane: list[tuple[int, list[PlannedUrl], str]]) -> Iterator[Job]:
        for index, planned, source in lane:
            shard = _OpenShard(index, planned, source, self.output.image_writer(index),
                               time.perf_counter())  # fmt: skip
            if not planned:
                self._commit(shard)
            for i, p in enumerate(planned):
                if p.error is not None:  # refused when planned: never fetched
                    _failed(shard.rows[i], p.error.code, p.error.message)
                    if self._count(shard, i):
                        self._commit(shard)
                    continue
                yield Job((shard, i), p.url, URL(p.url, encoded=True).raw_host or "")

    async def _done(self, job: Job, outcome: Fetched | CrawlError, seconds: float) -> None:
        shard, i = job.key
        row = shard.rows[i]
        row["fetch_s"] = round(seconds, 3)
        try:
            if isinstance(outcome, CrawlError):
                raise outcome
            row["http_status"] = outcome.http_status
            image = await self.pixels.run(process_image, outcome.body, self.config.process)
        except CrawlError as exc:
            _failed(row, exc.code, exc.message, exc.http_status)
        except Exception as exc:  # never let one URL end the run
            log.exception("unexpected error on %s", job.url)
            _failed(row, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        else:
            _succeeded(row, image)
            shard.images.add(row["id"], image.data, sample_meta(row))
        row["fetch_time"] = datetime.now(UTC)
        if self._count(shard, i):
            await asyncio.to_thread(self._commit, shard)

    def _count(self, shard: _OpenShard, i: int) -> bool:
        """Note row ``i`` as finished; True when it was the shard's last."""
        if self.on_items is not None:
            self.on_items(1, shard.rows[i]["status"] == "ok")
        shard.remaining -= 1
        return shard.remaining == 0

    def _commit(self, shard: _OpenShard) -> None:
        rows = shard.rows
        stats = ShardStats(
            shard=shard.index,
            rows=len(rows),
            ok=shard.images.count,
            error_codes=count_codes(rows),
            stored_bytes=sum(r["bytes"] for r in rows if r["status"] == "ok"),
            elapsed_s=round(time.perf_counter() - shard.started, 3),
            source=shard.source,
        )
        self.output.commit(shard.index, shard.images, rows, stats, asdict(self.config))
        self.stats.append(stats)
        log.info("shard %05d: %d/%d ok in %.1fs", stats.shard, stats.ok, stats.rows,
                 stats.elapsed_s)  # fmt: skip


def _empty_row(planned: PlannedUrl, shard: int) -> dict[str, Any]:
    row = dict.fromkeys(
        ("status", "error_code", "error_message", "http_status", "bytes", "original_width")
        + ("original_height", "width", "height", "sha256", "key", "fetch_time", "fetch_s")
    )
    row.update(id=planned.id, url=planned.url, page_url=planned.page_url, shard=shard)
    return row


def _succeeded(row: dict[str, Any], image: ProcessedImage) -> None:
    row.update(
        status="ok",
        bytes=len(image.data),
        width=image.width,
        height=image.height,
        original_width=image.original_width,
        original_height=image.original_height,
        sha256=image.sha256,
        key=row["id"],
    )


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


def crawl_lane(
    lane: list[tuple[int, list[PlannedUrl], str]],
    config: CrawlConfig,
    out_dir: str | Path,
    on_items: ItemCounter | None = None,
) -> list[ShardStats]:
    """Crawl a lane of shards, ``(index, planned URLs, source)`` each, in this process and
    commit each to ``out_dir`` as it completes, its stats recording its ``source``
    (:func:`~curation.crawl.urls.shard_source`); returns their stats.
    ``on_items(1, ok)`` is called as each URL finishes."""
    with keep_opencv_threads():  # the process may do other work after this lane
        return _run_event_loop(_crawl_lane(lane, config, CrawlOutput(out_dir), on_items))


async def _crawl_lane(
    lane: list[tuple[int, list[PlannedUrl], str]],
    config: CrawlConfig,
    output: CrawlOutput,
    on_items: ItemCounter | None,
) -> list[ShardStats]:
    init_worker()
    with PixelThreads(config.threads_per_process) as pixels:
        async with Fetcher(config.fetch) as fetcher:
            return await LaneCrawler(config, fetcher, pixels, output, on_items).crawl(lane)
