"""URL normalization and the stable image id derived from it."""

from __future__ import annotations

import hashlib

from yarl import URL

from curation.crawl.errors import CrawlError, ErrorCode

ALLOWED_SCHEMES = ("http", "https")


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
        url = url.with_scheme(scheme).with_host(url.host.lower()).with_fragment(None)
        text = str(url)
        bare_root = url.raw_path in ("", "/") and not url.raw_query_string
        return text + "/" if bare_root and not text.endswith("/") else text
    except CrawlError:
        raise
    except (ValueError, TypeError, UnicodeError) as exc:
        raise CrawlError(ErrorCode.INVALID_URL, f"cannot parse {text!r}: {exc}") from exc


def url_id(normalized_url: str) -> str:
    """128-bit hex id of a normalized URL: stable across runs, collision-safe at 1e10 rows."""
    return hashlib.blake2b(normalized_url.encode(), digest_size=16).hexdigest()
