"""URL normalization, the stable image id derived from it, and a URL as the plan holds it."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import socket
from dataclasses import dataclass

from yarl import URL

from curation.crawl.errors import CrawlError, ErrorCode

ALLOWED_SCHEMES = ("http", "https")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=65536)  # hosts repeat across a crawl's URLs
def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, or None if it is a name.

    Accepts what C resolvers accept: dotted quads, bracketed IPv6, and the legacy
    ``inet_aton`` forms (``2130706433``, ``0x7f.1``, ``0177.0.0.1``).
    """
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefABCDEFxX." for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def normalize_url(raw: str, base: str | None = None) -> str:
    """Canonical form of ``raw`` (resolved against ``base`` if relative).

    Lower-case scheme and host, IDNA host, default port dropped, fragment dropped,
    percent-encoding canonicalised, empty path as ``/``. Query order is kept: reordering
    parameters can change what a server returns.
    """
    text = raw.strip()
    try:
        url = URL(text)
        if not url.scheme:  # relative, or protocol-relative ("//host/path")
            if base is None:
                raise CrawlError(ErrorCode.INVALID_URL, f"relative URL without a base: {text!r}")
            url = URL(base).join(url)
        scheme = url.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise CrawlError(ErrorCode.UNSUPPORTED_SCHEME, f"scheme {scheme!r} in {text!r}")
        if not url.raw_host:
            raise CrawlError(ErrorCode.INVALID_URL, f"no host in {text!r}")
        url = url.with_scheme(scheme).with_host(_canonical_host(url.raw_host)).with_fragment(None)
        text = str(url)
        bare_root = url.raw_path in ("", "/") and not url.raw_query_string
        return text + "/" if bare_root and not text.endswith("/") else text
    except CrawlError:
        raise
    except (ValueError, TypeError, UnicodeError) as exc:
        raise CrawlError(ErrorCode.INVALID_URL, f"cannot parse {text!r}: {exc}") from exc


def _canonical_host(host: str) -> str:
    """Lower-case host; legacy numeric IPv4 (``2130706433``) as a dotted quad, as browsers do."""
    ip = parse_ip_literal(host)
    return str(ip) if isinstance(ip, ipaddress.IPv4Address) else host.lower()


def url_id(normalized_url: str) -> str:
    """128-bit hex id of a normalized URL: stable across runs, collision-safe at 1e10 rows."""
    return hashlib.blake2b(normalized_url.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class PlannedUrl:
    """One URL of a crawl plan: what a shard is made of, and all a worker is sent of it."""

    id: str
    url: str  # normalized; the text as written when it could not be normalized
    page_url: str | None = None
    error: CrawlError | None = None  # refused before download (invalid URL, scheme)


def shard_source(planned: list[PlannedUrl], settings: dict) -> str:
    """What a shard is crawled from: its URLs in order and ``settings``, those that change
    what it holds (``CrawlConfig.output_settings``). A committed shard whose recorded
    source differs is redone, never reused."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for row in planned:
        h.update(row.id.encode())
    return h.hexdigest()[:16]
