"""Which URL is fetched next: per-host queues, politeness, retries and circuit breakers.

A crawl of the web waits far more than it computes, so thousands of requests are in
flight at once (``fetch.concurrency``) while the decoding runs on a few threads. The
frontier keeps one queue per host and starts the oldest job of any host that may take
one (a retry keeps its age): a busy host gets its share in list order, held to its cap,
instead of one turn per round of the thousands of small hosts (it would then be the
last to finish, and set how long a crawl lasts), and no host waits behind the busy ones:

- a host takes one request until its robots.txt is known (that request fetches it,
  which also finds a dead host with one try), then up to ``per_host_concurrency``; each
  429 halves that and pauses the host for its Retry-After (or a backoff), each success
  adds one back;
- a retry (429, 502-504, a reset) waits outside any slot, with jitter, and only if it can
  start before the URL's deadline, which runs from its first try;
- failures of the host itself in a row (no name, no connection, no response) open its
  circuit breaker: its queued URLs fail at once until, after a cooldown, one probe may
  try again. A bad URL on a live host (a truncated body, a trickle) does not count.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from curation.crawl.config import FetchConfig
from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.fetch import Fetched, Fetcher, RetryableError
from curation.crawl.robots_txt import RobotsRules


@dataclass(eq=False)
class Job:
    """One URL to fetch; ``key`` is the caller's."""

    key: Any
    url: str
    host: str
    seq: int = 0  # its place in the order jobs were taken in
    tries: int = 0
    started: float | None = None  # the event loop's clock at the first try
    deadline: float = 0.0


Outcome = Fetched | CrawlError
OnDone = Callable[[Job, Outcome, float], Awaitable[None]]  # job, outcome, seconds taken


class _Host:
    __slots__ = ("name", "queue", "active", "limit", "not_before", "throttled", "failures",
                 "open_until", "robots", "unreachable", "ready", "key")  # fmt: skip

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.queue: deque[Job] = deque()
        self.active = 0
        self.limit = limit
        self.not_before = 0.0  # paused until (429)
        self.throttled = 0  # 429s since its last success
        self.failures = 0  # host failures in a row
        self.open_until = 0.0  # circuit breaker
        self.robots: RobotsRules | None = None
        self.unreachable: CrawlError | None = None  # its robots.txt could not be fetched
        self.ready = False  # in the frontier's ready queue
        self.key = 0  # under which: the age of its first job then


class Frontier:
    """Fetch every job :meth:`run` is given; ``on_done(job, outcome, seconds)`` is awaited
    once per job, outside the request slots (decoding happens there)."""

    def __init__(self, fetcher: Fetcher, config: FetchConfig, on_done: OnDone,
                 max_unfinished: int = 0, max_finishing: int = 0) -> None:  # fmt: skip
        self.fetcher, self.config, self.on_done = fetcher, config, on_done
        # jobs taken in but not finished (queued, in flight, waiting to retry, finishing)
        self.max_unfinished = max_unfinished or max(8 * config.concurrency, 4096)
        # jobs past their request and not finished (bodies waiting to be decoded)
        self.max_finishing = max_finishing or max(config.concurrency // 4, 64)
        self._hosts: dict[str, _Host] = {}
        # hosts that may have a job to start, by the age of their first job
        self._ready: list[tuple[int, int, _Host]] = []
        self._order = itertools.count()
        self._in_flight = self._finishing = self._unfinished = 0
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task] = set()
        self._error: BaseException | None = None  # what ends the run: a failed commit, say
        self.retries = 0
        self.breaker_trips = 0

    async def run(self, jobs: Iterator[Job]) -> None:
        more = True
        while True:
            while more and self._unfinished < self.max_unfinished:
                job = next(jobs, None)
                if job is None:
                    more = False
                    break
                self._unfinished += 1
                job.seq = next(self._order)
                self._enqueue(job)
            if not more and not self._unfinished:
                return
            self._dispatch()
            await self._wake.wait()
            self._wake.clear()
            if self._error is not None:
                for task in list(self._tasks):
                    task.cancel()
                raise self._error

    def _host(self, name: str) -> _Host:
        host = self._hosts.get(name)
        if host is None:
            first_limit = 1 if self.config.robots_txt else self.config.per_host_concurrency
            host = self._hosts[name] = _Host(name, first_limit)
        return host

    def _enqueue(self, job: Job, front: bool = False) -> None:
        host = self._host(job.host)
        (host.queue.appendleft if front else host.queue.append)(job)
        self._mark_ready(host)

    def _mark_ready(self, host: _Host) -> None:
        """Put ``host`` in line by the age of its first job; again, ahead, if a retry
        (older) went to the front of its queue since (the old place is then skipped)."""
        if host.queue:
            key = host.queue[0].seq
            if not host.ready or key < host.key:
                host.ready, host.key = True, key
                heapq.heappush(self._ready, (key, next(self._order), host))
        self._wake.set()

    def _dispatch(self) -> None:
        now = self._loop.time()
        while self._ready and self._in_flight < self.config.concurrency:
            if self._finishing >= self.max_finishing:
                return  # decoding is behind: fetch no more until it catches up
            key, _, host = heapq.heappop(self._ready)
            if not host.ready or key != host.key:
                continue  # a place it no longer holds
            host.ready = False
            if not host.queue:
                continue
            if host.unreachable is not None or host.open_until > now:
                self._fail_queued(host)
                continue
            if host.not_before > now:
                self._loop.call_at(host.not_before, self._mark_ready, host)
                continue
            if host.active >= host.limit:
                continue  # back in line when one of its requests ends
            job = host.queue.popleft()
            if job.started is not None and job.deadline <= now:  # waited out its deadline
                error = CrawlError(ErrorCode.TIMEOUT, "deadline passed before its retry")
                self._spawn(self._finish(job, error))
            else:
                host.active += 1
                self._in_flight += 1
                self._spawn(self._fetch(host, job))
            self._mark_ready(host)

    def _fail_queued(self, host: _Host) -> None:
        error = host.unreachable or CrawlError(
            ErrorCode.HOST_UNAVAILABLE,
            f"{host.name}: circuit breaker open after {self.config.breaker_failures} "
            "failures in a row to resolve, connect or get a response",
        )
        while host.queue:
            job = host.queue.popleft()
            self._spawn(self._finish(job, error))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()
            self._wake.set()

    async def _fetch(self, host: _Host, job: Job) -> None:
        now = self._loop.time()
        if job.started is None:
            job.started, job.deadline = now, now + self.config.total_timeout_s
        job.tries += 1
        try:
            outcome: Outcome | None = await self._try(host, job)
        except CrawlError as exc:
            outcome = exc
        finally:
            host.active -= 1
            self._in_flight -= 1
        self._note(host, outcome)  # every try counts: three resets open the breaker
        if isinstance(outcome, RetryableError):
            outcome = self._retry_later(host, job, outcome)
        self._mark_ready(host)
        if outcome is not None:
            await self._finish(job, outcome)

    async def _try(self, host: _Host, job: Job) -> Fetched:
        if host.robots is None and self.config.robots_txt:
            try:
                host.robots = await self.fetcher.robots_rules(job.url, job.deadline)
            except CrawlError as exc:
                host.unreachable = CrawlError(exc.code, f"robots.txt: {exc.message}",
                                              host_failure=exc.host_failure)  # fmt: skip
                raise host.unreachable from None
            host.limit = self.config.per_host_concurrency
        if host.robots is not None and not host.robots.allows(
            self.config.user_agent_token, job.url
        ):
            reason = host.robots.reason or f"disallowed by {host.name}'s robots.txt"
            raise CrawlError(ErrorCode.ROBOTS_TXT, reason)
        return await self.fetcher.fetch(job.url, job.deadline)

    def _retry_later(self, host: _Host, job: Job, exc: RetryableError) -> CrawlError | None:
        """Schedule ``job``'s next try and return None, or return the final error.

        A 429 is about the host, not the URL: the whole host slows down (half its
        connections, a pause for Retry-After or else a backoff that doubles with each 429
        in a row), and the URL's tries are not spent; its deadline still holds."""
        c = self.config
        now = self._loop.time()
        throttled = exc.http_status == 429
        # the requests in flight when a host first says 429 all hear it: one slow-down
        new_episode = throttled and host.not_before <= now
        if throttled:
            job.tries -= 1
            host.throttled += new_episode
        exponent = host.throttled if throttled else job.tries
        delay = c.backoff_base_s * 2 ** (exponent - 1) * (0.5 + random.random())
        if exc.retry_after is not None:
            if exc.retry_after > c.max_retry_after_s:
                return exc.final()
            delay = max(delay, exc.retry_after)
        at = max(now + delay, host.not_before) if throttled else now + delay
        if job.tries > c.max_retries or at >= job.deadline:
            return exc.final()
        if new_episode:
            host.limit = max(1, host.limit // 2)
            host.not_before = at
        self.retries += 1
        self._loop.call_at(at, self._enqueue, job, True)
        return None

    def _note(self, host: _Host, outcome: Outcome) -> None:
        """Count the host's failures (of any try); open the breaker on too many in a row."""
        if isinstance(outcome, CrawlError) and outcome.host_failure:
            host.failures += 1
            if host.failures >= self.config.breaker_failures:
                host.open_until = self._loop.time() + self.config.breaker_cooldown_s
                host.limit = 1  # after the cooldown, one probe
                self.breaker_trips += 1
            return
        host.failures = 0
        if isinstance(outcome, Fetched):
            host.limit = min(self.config.per_host_concurrency, host.limit + 1)
            host.throttled = 0

    async def _finish(self, job: Job, outcome: Outcome) -> None:
        seconds = self._loop.time() - job.started if job.started is not None else 0.0
        self._finishing += 1
        try:
            await self.on_done(job, outcome, seconds)
        finally:
            self._finishing -= 1
            self._unfinished -= 1
            self._wake.set()
