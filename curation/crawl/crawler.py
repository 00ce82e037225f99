"""The crawl stage: download, process and commit the shards of a :class:`CrawlPlan`.

:func:`crawl_shard` is the unit an engine schedules: it crawls one shard in the calling
process, downloading on an event loop and decoding/resizing on a few threads beside it
(Pillow and OpenCV release the GIL), then commits the shard. Image bytes never cross a
process boundary. :func:`run_crawl` runs the pending shards of a plan on this machine,
one worker process per shard at a time, or hands them to a
:class:`~curation.tasks.ShardRunner`, and resumes where a killed run stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from curation.crawl.config import CrawlConfig
from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.fetch import Fetcher
from curation.crawl.inputs import InputError
from curation.crawl.plan import CrawlPlan, PlannedUrl, plan_crawl
from curation.crawl.process import init_worker, process_image
from curation.crawl.shard_writer import CrawlOutput, ShardStats, count_codes, sample_meta
from curation.tasks import ShardRunner
from manifests.atomic import write_bytes_atomic
from manifests.image_shards import ImageShardWriter

log = logging.getLogger(__name__)

RUN_FILE = "crawl.json"

UrlCallback = Callable[[bool], None]  # called once per URL with whether it succeeded


class ResumeMismatchError(RuntimeError):
    """The output directory holds a crawl of different inputs or shard size."""


class ShardCrawler:
    """Turns planned URLs into pool rows and stored images."""

    def __init__(
        self, config: CrawlConfig, fetcher: Fetcher, executor: Executor, images: ImageShardWriter
    ) -> None:
        self.config = config
        self.fetcher = fetcher
        self.executor = executor
        self.images = images
        self._in_flight = asyncio.Semaphore(config.fetch.concurrency)

    async def crawl_url(self, planned: PlannedUrl, shard: int) -> dict[str, Any]:
        """The pool row of one URL; an ok row's image is already in the shard's tar."""
        row = _empty_row(planned, shard)
        try:
            if planned.error is not None:
                raise planned.error
            async with self._in_flight:
                fetched = await self.fetcher.fetch(planned.url)
                row["http_status"] = fetched.http_status
                loop = asyncio.get_running_loop()
                image = await loop.run_in_executor(
                    self.executor, process_image, fetched.body, self.config.process
                )
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


def crawl_shard(
    index: int,
    planned: list[PlannedUrl],
    config: CrawlConfig,
    out_dir: str | Path,
    on_url: UrlCallback | None = None,
) -> ShardStats:
    """Crawl one shard's URLs in this process and commit it to ``out_dir``; returns its stats."""
    return asyncio.run(_crawl_shard(index, planned, config, CrawlOutput(out_dir), on_url))


async def _crawl_shard(
    index: int,
    planned: list[PlannedUrl],
    config: CrawlConfig,
    output: CrawlOutput,
    on_url: UrlCallback | None,
) -> ShardStats:
    start = time.perf_counter()
    init_worker()
    with (
        ThreadPoolExecutor(config.threads_per_process) as pixels,
        output.image_writer(index) as images,
    ):
        async with Fetcher(config.fetch) as fetcher:
            crawler = ShardCrawler(config, fetcher, pixels, images)

            async def one(p: PlannedUrl) -> dict[str, Any]:
                row = await crawler.crawl_url(p, index)
                if on_url is not None:
                    on_url(row["status"] == "ok")
                return row

            rows = await asyncio.gather(*(one(p) for p in planned))
        stats = ShardStats(
            shard=index,
            rows=len(rows),
            ok=images.count,
            error_codes=count_codes(rows),
            stored_bytes=sum(r["bytes"] for r in rows if r["status"] == "ok"),
            elapsed_s=round(time.perf_counter() - start, 3),
        )
        output.commit(index, images, rows, stats, asdict(config))
    return stats


@dataclass
class CrawlSummary:
    out_dir: str
    urls: int
    input_records: int
    duplicates_removed: int
    input_problems: list[str]
    shards_total: int
    shards_skipped: int
    ok: int
    error_codes: dict[str, int]
    elapsed_s: float
    urls_this_run: int
    shards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def urls_per_s(self) -> float:
        return self.urls_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        problems = self.input_problems
        data["input_problems"] = {"count": len(problems), "first": problems[:50]}
        data["error"] = sum(self.error_codes.values())
        data["urls_per_s_this_run"] = round(self.urls_per_s, 2)
        return data


def run_crawl(
    inputs: list[str | Path],
    out_dir: str | Path,
    config: CrawlConfig,
    progress: bool = True,
    runner: ShardRunner | None = None,
) -> CrawlSummary:
    """Crawl every input URL into ``out_dir``; a rerun skips shards already complete.
    With a ``runner``, each pending shard is one task of :func:`crawl_shard` (its fetch
    limits then hold per task)."""
    started = time.perf_counter()
    plan = plan_crawl(inputs, config.url_column)
    for problem in plan.problems[:20]:
        log.warning("input: %s", problem)
    if not plan.rows:
        raise InputError(f"{[str(i) for i in inputs]}: no URLs in the inputs "
                         f"({len(plan.problems)} unusable records)")  # fmt: skip
    output = CrawlOutput(out_dir)
    _claim_output(output.root, plan, config)
    output.remove_partial()
    shards = plan.shards(config.shard_size)
    done = output.complete_shards()
    pending = [i for i in range(len(shards)) if i not in done]
    todo = sum(len(shards[i]) for i in pending)
    if runner is not None:
        runner(crawl_shard, [(i, shards[i], config, str(output.root)) for i in pending],
               desc="crawl")  # fmt: skip
    else:
        with tqdm(total=todo, unit="url", desc="crawl", disable=not progress,
                  smoothing=0.1) as bar:  # fmt: skip
            _crawl_in_processes(shards, pending, config, output.root, bar)
    all_stats = [output.shard_stats(i) for i in range(len(shards))]
    codes: dict[str, int] = {}
    for s in all_stats:
        for code, n in s.error_codes.items():
            codes[code] = codes.get(code, 0) + n
    summary = CrawlSummary(
        out_dir=str(output.root),
        urls=len(plan.rows),
        input_records=plan.input_records,
        duplicates_removed=plan.duplicates_removed,
        input_problems=plan.problems,
        shards_total=len(shards),
        shards_skipped=len(shards) - len(pending),
        ok=sum(s.ok for s in all_stats),
        error_codes=dict(sorted(codes.items())),
        elapsed_s=round(time.perf_counter() - started, 3),
        urls_this_run=todo,
        shards=[s.to_json() for s in all_stats],
    )
    stats_json = json.dumps(summary.to_json(), indent=1).encode()
    write_bytes_atomic(output.root / "stats.json", stats_json)
    return summary


class _SharedProgress:
    """Per-URL outcomes of a worker, added to counters the parent's progress bar reads.

    Counts are flushed in batches: a lock round trip per URL costs more than the URL's
    bookkeeping.
    """

    FLUSH_EVERY = 64

    def __init__(self, counters) -> None:  # counters: multiprocessing Array('q', 2): done, ok
        self.counters = counters
        self.done = self.ok = 0

    def __call__(self, ok: bool) -> None:
        self.done += 1
        self.ok += ok
        if self.done >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        with self.counters.get_lock():
            self.counters[0] += self.done
            self.counters[1] += self.ok
        self.done = self.ok = 0


_progress: _SharedProgress | None = None  # one per worker process


def _init_shard_worker(counters) -> None:
    global _progress
    _progress = _SharedProgress(counters)


def _crawl_shard_in_worker(index: int, planned: list[PlannedUrl], config, out_dir) -> ShardStats:
    try:
        return crawl_shard(index, planned, config, out_dir, on_url=_progress)
    finally:
        _progress.flush()


def _crawl_in_processes(
    shards: list[list[PlannedUrl]],
    pending: list[int],
    config: CrawlConfig,
    out_dir: Path,
    bar: tqdm,
) -> None:
    """One worker process per shard at a time; limits are split evenly over the workers."""
    if not pending:
        return
    workers = min(config.processes or os.cpu_count() or 1, len(pending))
    per_worker = replace(
        config,
        fetch=replace(
            config.fetch,
            concurrency=max(1, config.fetch.concurrency // workers),
            per_host_concurrency=max(1, config.fetch.per_host_concurrency // workers),
        ),
    )
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # workers fork with cv2, aiohttp, pyarrow imported
    counters = ctx.Array("q", 2)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_shard_worker, initargs=(counters,)
    ) as pool:
        remaining = {
            pool.submit(_crawl_shard_in_worker, i, shards[i], per_worker, out_dir) for i in pending
        }
        while remaining:
            finished, remaining = wait_futures(remaining, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                stats = future.result()  # a crashed worker is a bug: surface it
                log.info("shard %05d: %d/%d ok in %.1fs", stats.shard, stats.ok, stats.rows,
                         stats.elapsed_s)  # fmt: skip
            done, ok = counters[0], counters[1]
            bar.update(done - bar.n)
            elapsed = bar.format_dict["elapsed"] or 1e-9
            bar.set_postfix(img_per_s=f"{ok / elapsed:.0f}", ok=f"{100 * ok / max(done, 1):.1f}%")


def _claim_output(root: Path, plan: CrawlPlan, config: CrawlConfig) -> None:
    """Record what this directory is a crawl of; refuse to resume a different crawl into it."""
    identity = {"plan": plan.fingerprint(), "urls": len(plan.rows), "shard_size": config.shard_size}
    run_file = root / RUN_FILE
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous.get("identity") != identity:
            raise ResumeMismatchError(
                f"{root} holds a crawl of other inputs or shard size ({run_file}: "
                f"{previous.get('identity')} vs now {identity}); use a new --out directory"
            )
    root.mkdir(parents=True, exist_ok=True)
    record = {"identity": identity, "config": asdict(config)}
    write_bytes_atomic(run_file, json.dumps(record, indent=1, default=str).encode())
