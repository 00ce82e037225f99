"""A DNS cache in front of the HTTP client's resolver: one query per name and record type.

aiohttp's own cache keeps answers only, so a name that fails is asked again for each of
its URLs, and a resolver that never answers stalls every one of them for its timeout.
Here failures are kept too (an answer that the name does not exist, for a shorter time;
a timeout not at all: it says nothing about the name), concurrent lookups of one name
share one query, which runs to its own timeout even when the request that started it is
cancelled, so that its answer is kept for the others, and at most ``concurrency`` queries
are out at once: a crawl that meets thousands of new names in its first second would
otherwise flood the resolver until it drops queries (which then time out).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from aiohttp.abc import AbstractResolver

from curation.crawl.config import FetchConfig

Answers = list[dict[str, Any]]


def system_resolver(config: FetchConfig) -> AbstractResolver:
    """c-ares (aiodns) where installed: asynchronous, unlike getaddrinfo on threads."""
    try:
        from aiohttp.resolver import AsyncResolver

        kwargs: dict[str, Any] = {"timeout": config.dns_timeout_s, "tries": 2}
        if config.nameservers:
            kwargs["nameservers"] = config.nameservers
        return AsyncResolver(**kwargs)
    except (ImportError, RuntimeError):  # aiohttp raises RuntimeError without aiodns
        from aiohttp.resolver import ThreadedResolver

        return ThreadedResolver()


class CachingResolver(AbstractResolver):
    def __init__(self, inner: AbstractResolver, ttl_s: float, negative_ttl_s: float,
                 concurrency: int = 64) -> None:  # fmt: skip
        self._inner = inner
        self._ttl_s, self._negative_ttl_s = ttl_s, negative_ttl_s
        self._slots = asyncio.Semaphore(concurrency)
        self._cache: dict[tuple[str, int], tuple[float, Answers | OSError]] = {}
        self._pending: dict[tuple[str, int], asyncio.Future] = {}
        self.lookups = 0  # queries actually made

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> Answers:
        key = (host, int(family))
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            outcome = cached[1]
        else:
            pending = self._pending.get(key)
            if pending is None:
                pending = asyncio.ensure_future(self._lookup(key))
                self._pending[key] = pending
            outcome = await asyncio.shield(pending)
        if isinstance(outcome, OSError):
            raise outcome
        return [{**answer, "port": port} for answer in outcome]

    async def _lookup(self, key: tuple[str, int]) -> Answers | OSError:
        try:
            async with self._slots:
                self.lookups += 1
                outcome: Answers | OSError = await self._inner.resolve(key[0], 0, key[1])
            ttl = self._ttl_s
        except OSError as exc:
            outcome, ttl = exc, 0.0 if _no_answer(exc) else self._negative_ttl_s
        finally:
            del self._pending[key]
        if ttl > 0:
            self._cache[key] = (time.monotonic() + ttl, outcome)
        return outcome

    async def close(self) -> None:
        await self._inner.close()


def _no_answer(exc: OSError) -> bool:
    """No answer at all (c-ares: "Timeout while contacting DNS servers", "Could not contact
    DNS servers"; getaddrinfo: EAI_AGAIN), as opposed to an answer that the name does not
    exist."""
    text = str(exc).lower()
    return exc.errno == socket.EAI_AGAIN or "timeout" in text or "could not contact" in text
