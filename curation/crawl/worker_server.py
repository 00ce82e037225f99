"""The server that a crawl's worker processes are forked from.

Workers come from a forkserver (a clean, single-threaded process that has imported the
crawler once: :mod:`curation.crawl.worker_preload`) rather than from a fork of the caller,
whose threads make fork unsafe. Starting the server costs about half a CPU-second of
imports; :func:`start_worker_server` lets a command pay it while it starts up itself,
on a core its own start leaves idle, instead of in the crawl's first second.

This module imports nothing of the crawler, so that a command can call it first.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os

PRELOAD = "curation.crawl.worker_preload"


def crawl_processes(configured: int) -> int:
    """Processes that crawl at once on this machine (this one included): 0 means per core."""
    return configured or os.cpu_count() or 1


def worker_context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD])
    return ctx


def start_worker_server(processes: int) -> None:
    """Start the workers' forkserver now if a crawl of ``processes`` (as configured) will
    use workers; it keeps running for the crawls of this process."""
    if crawl_processes(processes) > 1:
        worker_context()
        multiprocessing.forkserver.ensure_running()
