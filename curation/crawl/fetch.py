"""Asynchronous, guarded HTTP download of one image URL (one try), and of a host's
robots.txt.

Redirects are followed by hand so that every hop passes the scheme, blocklist and
address checks; bodies are read under a byte cap that also holds for gzip/deflate
transfers (decompressed here, in bounded steps, not by the client).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
import zlib
from dataclasses import dataclass

import aiohttp
from yarl import URL

from curation.crawl.config import FetchConfig
from curation.crawl.dns_cache import CachingResolver, system_resolver
from curation.crawl.errors import CrawlError, ErrorCode
from curation.crawl.guard import AddressPolicy, DomainBlocklist, GuardedResolver
from curation.crawl.robots import forbidding_directive
from curation.crawl.robots_txt import MAX_BYTES as MAX_ROBOTS_BYTES
from curation.crawl.robots_txt import RobotsRules
from curation.crawl.urls import normalize_url

_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 256 * 1024


@dataclass
class Fetched:
    body: bytes
    http_status: int
    final_url: str


class RetryableError(CrawlError):
    """A failure worth another try later: 429, 502-504, a connection reset mid-request.
    ``retry_after``: what the server asked for (seconds), if it did."""

    def __init__(self, error: CrawlError, retry_after: float | None = None) -> None:
        super().__init__(error.code, error.message, error.http_status, error.host_failure)
        self.retry_after = retry_after

    def final(self) -> CrawlError:
        return CrawlError(self.code, self.message, self.http_status, self.host_failure)


_RETRIED_STATUSES = {429, 502, 503, 504}


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
    """One HTTP session (keep-alive, global and per-host connection caps, cached DNS);
    use as ``async with``. Each call is one try; retrying is the caller's decision."""

    def __init__(self, config: FetchConfig) -> None:
        self.config = config
        self.policy = AddressPolicy(config.allow_private_networks, config.allowed_networks)
        self.blocklist = (
            DomainBlocklist.from_file(config.domain_blocklist)
            if config.domain_blocklist
            else DomainBlocklist()
        )
        self._session: aiohttp.ClientSession | None = None
        self.dns: CachingResolver | None = None

    async def __aenter__(self) -> Fetcher:
        c = self.config
        self.dns = CachingResolver(system_resolver(c), c.dns_cache_s, c.dns_negative_cache_s)
        self._resolver = GuardedResolver(self.policy, self.dns)
        connector = aiohttp.TCPConnector(
            limit=c.concurrency,
            limit_per_host=c.per_host_concurrency,
            resolver=self._resolver,
            use_dns_cache=False,  # self.dns is the cache
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
        await self._resolver.close()  # the connector closes only a resolver it made

    def check_url(self, url: URL) -> None:
        """Refuse a URL before any connection: blocklisted host or a non-public IP literal."""
        host = url.raw_host or ""
        self.blocklist.check(host)
        self.policy.check_literal(host)

    async def fetch(self, url: str, deadline: float) -> Fetched:
        """One try at ``url`` (normalized), redirects followed, done by ``deadline`` (the
        event loop's clock); raises :class:`CrawlError`, or :class:`RetryableError`."""
        answered = _Answered()
        return await self._until(deadline, self._follow(url, self._read_image, answered), answered)

    async def robots_rules(self, url: str, deadline: float) -> RobotsRules:
        """The robots.txt rules of ``url``'s host (scheme and port included); raises
        :class:`CrawlError` when the host cannot be reached."""
        robots = str(URL(url, encoded=True).with_path("/robots.txt").with_query(None))
        answered = _Answered()
        try:
            status, body = await self._until(
                deadline, self._follow(robots, self._read_robots, answered), answered
            )
        except RetryableError as exc:  # a reset: no second try for robots.txt
            raise exc.final() from None
        return RobotsRules.from_response(status, body)

    async def _until(self, deadline: float, work, answered: _Answered):
        try:
            async with asyncio.timeout_at(deadline):
                return await work
        except TimeoutError as exc:
            raise CrawlError(
                ErrorCode.TIMEOUT,
                f"no complete response within {self.config.total_timeout_s}s",
                host_failure=not answered.yes,
            ) from exc

    async def _follow(self, url: str, read, answered: _Answered):
        seen = {url}
        for _ in range(self.config.max_redirects + 1):
            target = URL(url, encoded=True)  # normalized: parse once, for us and the client
            self.check_url(target)
            location, result = await self._request(target, read, answered)
            if location is None:
                return result
            url = normalize_url(location, base=url)
            if url in seen:
                raise CrawlError(ErrorCode.TOO_MANY_REDIRECTS, f"redirect loop back to {url}")
            seen.add(url)
        raise CrawlError(
            ErrorCode.TOO_MANY_REDIRECTS, f"more than {self.config.max_redirects} redirects"
        )

    async def _request(self, url: URL, read, answered: _Answered) -> tuple[str | None, object]:
        """One request: ``(location, None)`` for a redirect, ``(None, read(response))``
        otherwise."""
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                answered.yes = True
                if resp.status in _REDIRECTS and "Location" in resp.headers:
                    return resp.headers["Location"], None
                return None, await read(resp, url)
        except (CrawlError, TimeoutError):
            raise
        except aiohttp.ClientConnectorDNSError as exc:
            message = f"{url.host}: {exc.os_error}"
            raise CrawlError(ErrorCode.DNS, message, host_failure=True) from exc
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable: the host is down
            raise CrawlError(ErrorCode.CONNECT, repr(exc), host_failure=True) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise CrawlError(ErrorCode.TIMEOUT, str(exc) or "read timed out",
                             host_failure=not answered.yes) from exc  # fmt: skip
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:  # resets
            error = CrawlError(ErrorCode.CONNECT, repr(exc), host_failure=not answered.yes)
            raise RetryableError(error) from exc
        except aiohttp.InvalidURL as exc:
            raise CrawlError(ErrorCode.INVALID_URL, str(exc)) from exc
        except aiohttp.ClientResponseError as exc:
            raise CrawlError(ErrorCode.CONNECT, f"malformed response: {exc}") from exc

    async def _read_image(self, resp: aiohttp.ClientResponse, url: URL) -> Fetched:
        self._check_status(resp)
        self._check_robots_directive(resp)
        body = await self._read_body(resp, self.config.max_bytes)
        return Fetched(body, resp.status, str(url))

    async def _read_robots(self, resp: aiohttp.ClientResponse, url: URL) -> tuple[int, bytes]:
        if not 200 <= resp.status < 300:
            return resp.status, b""
        try:
            return resp.status, await self._read_body(resp, MAX_ROBOTS_BYTES)
        except CrawlError:  # over the cap: not read, taken as a server error (disallow all)
            return 500, b""

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
        if status in _RETRIED_STATUSES:
            raise RetryableError(error, retry_after_seconds(resp.headers.get("Retry-After")))
        raise error

    def _check_robots_directive(self, resp: aiohttp.ClientResponse) -> None:
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

    async def _read_body(self, resp: aiohttp.ClientResponse, cap: int) -> bytes:
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


class _Answered:
    """Whether any response (headers) came back during one try."""

    yes = False


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
