"""Asynchronous, guarded HTTP download of one image URL.

Redirects are followed by hand so that every hop passes the scheme, blocklist and
address checks; bodies are read under a byte cap that also holds for gzip/deflate
transfers (decompressed here, in bounded steps, not by the client).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import zlib
from dataclasses import dataclass

import aiohttp
from yarl import URL

from curation.crawl.config import FetchConfig
from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.guard import AddressPolicy, DomainBlocklist, GuardedResolver
from curation.crawl.robots import forbidding_directive
from curation.crawl.urls import normalize_url

_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 256 * 1024


@dataclass
class Fetched:
    body: bytes
    http_status: int
    final_url: str


class _Retryable(Exception):
    def __init__(self, error: CrawlError, retry_after: float | None = None) -> None:
        self.error, self.retry_after = error, retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class Fetcher:
    """One HTTP session with global and per-host limits; use as ``async with``."""

    def __init__(self, config: FetchConfig) -> None:
        self.config = config
        self.policy = AddressPolicy(config.allow_private_networks, config.allowed_networks)
        self.blocklist = (
            DomainBlocklist.from_file(config.domain_blocklist)
            if config.domain_blocklist
            else DomainBlocklist()
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        c = self.config
        connector = aiohttp.TCPConnector(
            limit=c.concurrency,
            limit_per_host=c.per_host_concurrency,
            resolver=GuardedResolver(self.policy),
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                sock_connect=c.connect_timeout_s, sock_read=c.read_timeout_s
            ),
            headers={"User-Agent": c.user_agent, "Accept-Encoding": "gzip, deflate"},
            auto_decompress=False,
            trust_env=False,  # never route through a proxy named by the environment
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    def check_url(self, url: URL) -> None:
        """Refuse a URL before any connection: blocklisted host or a non-public IP literal."""
        host = url.raw_host or ""
        self.blocklist.check(host)
        self.policy.check_literal(host)

    async def fetch(self, url: str) -> Fetched:
        """Download ``url`` (already normalized); raises :class:`CrawlError` on failure."""
        c = self.config
        for attempt in range(c.max_retries + 1):
            try:
                async with asyncio.timeout(c.total_timeout_s):
                    return await self._follow(url)
            except _Retryable as retry:
                if attempt == c.max_retries:
                    raise retry.error from None
                delay = c.backoff_base_s * 2**attempt * (0.5 + random.random())
                if retry.retry_after is not None:
                    if retry.retry_after > c.max_retry_after_s:
                        raise retry.error from None
                    delay = max(delay, retry.retry_after)
                await asyncio.sleep(delay)
            except TimeoutError as exc:
                raise CrawlError(
                    ErrorCode.TIMEOUT, f"no complete response within {c.total_timeout_s}s"
                ) from exc
        raise AssertionError("unreachable")

    async def _follow(self, url: str) -> Fetched:
        seen = {url}
        for _ in range(self.config.max_redirects + 1):
            target = URL(url, encoded=True)  # normalized: parse once, for us and the client
            self.check_url(target)
            location, fetched = await self._request(target)
            if fetched is not None:
                return fetched
            url = normalize_url(location, base=url)
            if url in seen:
                raise CrawlError(ErrorCode.TOO_MANY_REDIRECTS, f"redirect loop back to {url}")
            seen.add(url)
        raise CrawlError(
            ErrorCode.TOO_MANY_REDIRECTS, f"more than {self.config.max_redirects} redirects"
        )

    async def _request(self, url: URL) -> tuple[str | None, Fetched | None]:
        """One request: ``(location, None)`` for a redirect, ``(None, fetched)`` otherwise."""
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                status = resp.status
                if status in _REDIRECTS and "Location" in resp.headers:
                    return resp.headers["Location"], None
                self._check_status(resp)
                self._check_robots(resp)
                body = await self._read_body(resp)
                return None, Fetched(body, status, str(url))
        except (CrawlError, _Retryable, TimeoutError):
            raise
        except aiohttp.ClientConnectorDNSError as exc:
            raise CrawlError(ErrorCode.DNS, f"{url.host}: {exc.os_error}") from exc
        except aiohttp.ServerTimeoutError as exc:
            raise CrawlError(ErrorCode.TIMEOUT, str(exc) or "read timed out") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Retryable(CrawlError(ErrorCode.CONNECT, repr(exc))) from exc
        except aiohttp.InvalidURL as exc:
            raise CrawlError(ErrorCode.INVALID_URL, str(exc)) from exc
        except aiohttp.ClientResponseError as exc:
            raise CrawlError(ErrorCode.CONNECT, f"malformed response: {exc}") from exc

    def _check_status(self, resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        if 200 <= status < 300:
            return
        error = CrawlError(
            ErrorCode.HTTP_4XX
            if 400 <= status < 500
            else ErrorCode.HTTP_5XX
            if 500 <= status < 600
            else ErrorCode.HTTP_OTHER,
            f"HTTP {status} {resp.reason or ''}".strip(),
            http_status=status,
        )
        if status == 429 or status >= 500:
            raise _Retryable(error, retry_after_seconds(resp.headers.get("Retry-After")))
        raise error

    def _check_robots(self, resp: aiohttp.ClientResponse) -> None:
        c = self.config
        directive = forbidding_directive(
            resp.headers.getall("X-Robots-Tag", []),
            c.user_agent_token,
            c.disallowed_robots_directives,
        )
        if directive:
            raise CrawlError(
                ErrorCode.ROBOTS_DIRECTIVE, f"X-Robots-Tag: {directive}", http_status=resp.status
            )

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self.config.max_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise _too_large(cap, resp.status)
        decoder = _decoder(resp.headers.get("Content-Encoding", ""), resp.status)
        if decoder is None and resp.content_length is not None:
            return await resp.read()  # the client stops at Content-Length, checked above
        parts, size = [], 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            data = chunk if decoder is None else decoder.decompress(chunk, cap - size + 1)
            size += len(data)
            if size > cap or (decoder is not None and decoder.unconsumed_tail):
                raise _too_large(cap, resp.status)
            parts.append(data)
        return b"".join(parts)


def _too_large(cap: int, status: int) -> CrawlError:
    return CrawlError(ErrorCode.TOO_LARGE, f"body over {cap} bytes", http_status=status)


def _decoder(encoding: str, status: int) -> zlib._Decompress | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    raise CrawlError(
        ErrorCode.UNSUPPORTED_ENCODING, f"Content-Encoding {encoding!r}", http_status=status
    )
