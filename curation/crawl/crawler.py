"""The crawl stage: download, process and commit shards of a :class:`CrawlPlan`.

One event loop downloads; a process pool decodes and resizes. :func:`crawl_shard` is the
unit an engine schedules; :func:`run_crawl` runs all pending shards of a plan on this
machine and resumes where a killed run stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from curation.crawl.config import CrawlConfig
from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.fetch import Fetcher
from curation.crawl.plan import CrawlPlan, PlannedUrl, plan_crawl
from curation.crawl.process import init_worker, process_image
from curation.crawl.shard_writer import CrawlOutput, ShardStats, count_codes
from manifests.atomic import write_bytes_atomic

log = logging.getLogger(__name__)

RUN_FILE = "crawl.json"


class ResumeMismatchError(RuntimeError):
    """The output directory holds a crawl of different inputs or shard size."""


class ShardCrawler:
    """Turns planned URLs into pool rows and stored images."""

    def __init__(self, config: CrawlConfig, fetcher: Fetcher, executor: Executor) -> None:
        self.config = config
        self.fetcher = fetcher
        self.executor = executor
        self._in_flight = asyncio.Semaphore(config.fetch.concurrency)

    async def crawl_url(self, planned: PlannedUrl, shard: int) -> tuple[dict[str, Any], bytes]:
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
            return _failed(row, exc.code, exc.message, exc.http_status), b""
        except Exception as exc:  # never let one URL end the run
            log.exception("unexpected error on %s", planned.url)
            return _failed(row, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), b""
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
        return row, image.data


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


async def crawl_shard(
    index: int,
    planned: list[PlannedUrl],
    crawler: ShardCrawler,
    output: CrawlOutput,
    progress: tqdm | None = None,
) -> ShardStats:
    """Crawl one shard's URLs and commit it; returns its stats."""
    start = time.perf_counter()

    async def one(p: PlannedUrl) -> tuple[dict[str, Any], bytes]:
        result = await crawler.crawl_url(p, index)
        if progress is not None:
            progress.update(1)
        return result

    results = await asyncio.gather(*(one(p) for p in planned))
    rows = [row for row, _ in results]
    images = {row["key"]: data for row, data in results if row["key"] is not None}
    stats = ShardStats(
        shard=index,
        rows=len(rows),
        ok=len(images),
        error_codes=count_codes(rows),
        stored_bytes=sum(map(len, images.values())),
        elapsed_s=round(time.perf_counter() - start, 3),
    )
    await asyncio.to_thread(output.commit, index, rows, images, stats, asdict(crawler.config))
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
        data["input_problems"] = {
            "count": len(self.input_problems),
            "first": self.input_problems[:50],
        }
        data["error"] = sum(self.error_codes.values())
        data["urls_per_s_this_run"] = round(self.urls_per_s, 2)
        return data


def run_crawl(
    inputs: list[str | Path], out_dir: str | Path, config: CrawlConfig, progress: bool = True
) -> CrawlSummary:
    """Crawl every input URL into ``out_dir``; a rerun skips shards already complete."""
    started = time.perf_counter()
    plan = plan_crawl(inputs, config.url_column)
    for problem in plan.problems[:20]:
        log.warning("input: %s", problem)
    output = CrawlOutput(out_dir)
    _claim_output(output.root, plan, config)
    output.remove_partial()
    shards = plan.shards(config.shard_size)
    done = output.complete_shards()
    pending = [i for i in range(len(shards)) if i not in done]
    todo = sum(len(shards[i]) for i in pending)
    bar = tqdm(total=todo, unit="url", desc="crawl", disable=not progress, smoothing=0.05)
    try:
        asyncio.run(_crawl_pending(shards, pending, config, output, bar))
    finally:
        bar.close()
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
    write_bytes_atomic(output.root / "stats.json", json.dumps(summary.to_json(), indent=1).encode())
    return summary


async def _crawl_pending(
    shards: list[list[PlannedUrl]],
    pending: list[int],
    config: CrawlConfig,
    output: CrawlOutput,
    bar: tqdm,
) -> None:
    workers = config.processes or os.cpu_count() or 1
    ctx = multiprocessing.get_context("forkserver")
    open_shards = asyncio.Semaphore(config.max_open_shards)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker) as pool:
        async with Fetcher(config.fetch) as fetcher:
            crawler = ShardCrawler(config, fetcher, pool)

            async def run(index: int) -> None:
                async with open_shards:
                    stats = await crawl_shard(index, shards[index], crawler, output, bar)
                log.info(
                    "shard %05d: %d/%d ok in %.1fs", index, stats.ok, stats.rows, stats.elapsed_s
                )

            await asyncio.gather(*(run(i) for i in pending))


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
