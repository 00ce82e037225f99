"""Threads beside an event loop for the pixel work (decode, resize, encode).

Each result is handed back with one ``call_soon_threadsafe``: ``loop.run_in_executor``
costs more CPU per call (concurrent.futures' locks and the chaining of its future to an
asyncio one), and a crawl makes one call per image.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any


class PixelThreads:
    """``threads`` threads running blocking calls for the running event loop; a context
    manager (on exit, queued calls are dropped and the threads joined)."""

    def __init__(self, threads: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"pixels-{i}") for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """``fn(*args)`` on one of the threads; await the returned future for its result."""
        future = self._loop.create_future()
        self._jobs.put((future, fn, args))
        return future

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # delivered to the awaiting coroutine
                result, error = None, exc
            self._loop.call_soon_threadsafe(_settle, future, result, error)

    def close(self) -> None:
        try:
            while True:
                self._jobs.get_nowait()
        except queue.Empty:
            pass
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> PixelThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
