"""PixelThreads: blocking calls on threads beside a running event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from curation.crawl.pixel_threads import PixelThreads


def test_calls_run_concurrently_on_the_threads_and_return_to_the_loop():
    barrier = threading.Barrier(2, timeout=10)  # passes only if both calls run at once

    def meet(tag: str) -> tuple[str, str]:
        barrier.wait()
        return tag, threading.current_thread().name

    async def main():
        with PixelThreads(2) as pixels:
            return await asyncio.gather(pixels.run(meet, "a"), pixels.run(meet, "b"))

    (a, thread_a), (b, thread_b) = asyncio.run(main())
    assert (a, b) == ("a", "b")
    assert {thread_a, thread_b} == {"pixels-0", "pixels-1"}


def test_an_exception_reaches_the_awaiting_coroutine():
    def fail(n: int) -> None:
        raise ValueError(f"bad input {n}")

    async def main():
        with PixelThreads(1) as pixels:
            with pytest.raises(ValueError, match="bad input 7"):
                await pixels.run(fail, 7)
            return await pixels.run(len, "still serving")

    assert asyncio.run(main()) == len("still serving")


def test_on_exit_queued_calls_are_dropped_and_the_threads_joined():
    release, ran = threading.Event(), []

    async def main():
        with PixelThreads(1) as pixels:
            pixels.run(release.wait, 30)  # occupies the only thread
            for i in range(3):
                pixels.run(ran.append, i)
            threading.Timer(0.5, release.set).start()
        return pixels

    pixels = asyncio.run(main())
    assert ran == []
    assert not any(t.is_alive() for t in pixels._threads)
