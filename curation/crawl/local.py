"""Crawling a plan's pending shards on this machine, in this process and a few workers.

Each process crawls one shard at a time (:func:`~curation.crawl.shard.crawl_shard`) and
takes the next pending shard when it has committed one; the parent's progress bar reads
counters the processes share.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.crawl.config import CrawlConfig
from curation.crawl.process import keep_opencv_threads
from curation.crawl.shard import crawl_shard
from curation.crawl.shard_writer import ShardStats
from curation.crawl.urls import PlannedUrl
from curation.crawl.worker_server import crawl_processes, worker_context

if TYPE_CHECKING:  # workers import this module, and have no bar to draw
    from tqdm import tqdm

log = logging.getLogger(__name__)


class _SharedProgress:
    """Per-URL outcomes of a process, added to counters the parent's progress bar reads.

    Counts are flushed in batches: a lock round trip per URL costs more than the URL's
    bookkeeping.
    """

    FLUSH_EVERY = 64

    def __init__(self, counters) -> None:  # multiprocessing Array('q', 2): URLs done, ok
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


def _crawl_counted(
    progress: _SharedProgress, index: int, planned: list[PlannedUrl], config, out_dir
) -> ShardStats:
    """Crawl one shard, its URLs counted into ``progress`` (flushed even if it fails)."""
    try:
        return crawl_shard(index, planned, config, out_dir, on_url=progress)
    finally:
        progress.flush()


def _crawl_shard_in_worker(index: int, planned: list[PlannedUrl], config, out_dir) -> ShardStats:
    return _crawl_counted(_progress, index, planned, config, out_dir)


class _ShardQueue:
    """Pending shard indices, taken one at a time by this process and by the workers."""

    def __init__(self, indices: list[int]) -> None:
        self._indices = iter(indices)
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            return next(self._indices, None)

    def close(self) -> None:
        """Hand out nothing more (after a failure)."""
        with self._lock:
            self._indices = iter(())


@dataclass
class _Lanes:
    """What the processes crawling one plan share: the shards, the queue, the progress."""

    shards: list[list[PlannedUrl]]
    queue: _ShardQueue
    config: CrawlConfig  # limits already split over the processes
    out_dir: Path
    counters: Any  # multiprocessing Array('q', 2): URLs done, ok


def crawl_pending_shards(
    shards: list[list[PlannedUrl]],
    pending: list[int],
    config: CrawlConfig,
    out_dir: Path,
    bar: tqdm,
) -> None:
    """Crawl the pending shards in this process and ``processes - 1`` workers, each taking
    the next shard when it has committed one; fetch limits are split evenly over them.

    This process crawls from the start, its imports done, while the workers start (from a
    forkserver: :mod:`curation.crawl.worker_server`).
    """
    if not pending:
        return
    processes = min(crawl_processes(config.processes), len(pending))
    ctx = worker_context()
    lanes = _Lanes(shards, _ShardQueue(pending), _split_limits(config, processes), out_dir,
                   ctx.Array("q", 2))  # fmt: skip
    here_done = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="crawl-workers") as feeder:
        workers = feeder.submit(_run_workers, lanes, processes - 1, ctx, bar, here_done)
        try:
            _crawl_here(lanes)
        except BaseException:
            lanes.queue.close()
            raise
        finally:
            here_done.set()
        workers.result()


def _split_limits(config: CrawlConfig, processes: int) -> CrawlConfig:
    fetch = config.fetch
    return replace(
        config,
        fetch=replace(
            fetch,
            concurrency=max(1, fetch.concurrency // processes),
            per_host_concurrency=max(1, fetch.per_host_concurrency // processes),
        ),
    )


def _crawl_here(lanes: _Lanes) -> None:
    progress = _SharedProgress(lanes.counters)
    with keep_opencv_threads():
        while (index := lanes.queue.take()) is not None:
            _log_shard(_crawl_counted(progress, index, lanes.shards[index], lanes.config,
                                      lanes.out_dir))  # fmt: skip


def _run_workers(lanes: _Lanes, n: int, ctx, bar: tqdm, here_done: threading.Event) -> None:
    """Keep ``n`` worker processes crawling the queue's shards, and the bar current, until
    the queue is empty and this process is done with its own shards."""
    pool = None
    if n:
        pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_shard_worker,
                                   initargs=(lanes.counters,))  # fmt: skip
    running: set = set()
    try:
        while running or not here_done.is_set():
            while pool is not None and len(running) < n and (i := lanes.queue.take()) is not None:
                running.add(pool.submit(_crawl_shard_in_worker, i, lanes.shards[i],
                                        lanes.config, lanes.out_dir))  # fmt: skip
            if running:
                done, running = wait_futures(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    _log_shard(future.result())  # a crashed worker is a bug: surface it
            else:
                here_done.wait(0.5)
            _show_progress(bar, lanes.counters)
    except BaseException:
        lanes.queue.close()
        raise
    finally:
        _show_progress(bar, lanes.counters)
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _log_shard(stats: ShardStats) -> None:
    log.info("shard %05d: %d/%d ok in %.1fs", stats.shard, stats.ok, stats.rows, stats.elapsed_s)


def _show_progress(bar: tqdm, counters) -> None:
    done, ok = counters[0], counters[1]
    bar.update(done - bar.n)
    elapsed = bar.format_dict["elapsed"] or 1e-9
    bar.set_postfix(img_per_s=f"{ok / elapsed:.0f}", ok=f"{100 * ok / max(done, 1):.1f}%")
