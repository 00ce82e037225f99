"""What goes wrong in a crawl: the closed set of error codes a pool row can carry and the
exception that carries one; and the error that stops a crawl before it starts."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a URL produced no image. Every failed pool row has exactly one of these."""

    INVALID_URL = "invalid_url"  # unparseable, no host, or relative without a base
    UNSUPPORTED_SCHEME = "unsupported_scheme"  # anything but http/https
    BLOCKED_DOMAIN = "blocked_domain"  # host (or a parent domain) is on the blocklist
    BLOCKED_PRIVATE_ADDRESS = "blocked_private_address"  # resolves to a non-public address
    DNS = "dns"  # name did not resolve
    CONNECT = "connect"  # TCP/TLS connection failed or was reset
    TIMEOUT = "timeout"  # connect, read or total time limit exceeded
    TOO_MANY_REDIRECTS = "too_many_redirects"  # redirect cap exceeded, or a redirect loop
    HTTP_4XX = "http_4xx"  # final response 4xx (429 after retries included)
    HTTP_5XX = "http_5xx"  # final response 5xx after retries
    HTTP_OTHER = "http_other"  # a final status that is neither 2xx, 4xx nor 5xx
    ROBOTS_DIRECTIVE = "robots_directive"  # X-Robots-Tag forbids use (noai, noimageai, ...)
    ROBOTS_TXT = "robots_txt"  # the host's robots.txt disallows the path (or is unreachable)
    HOST_UNAVAILABLE = "host_unavailable"  # the host's circuit breaker is open
    TOO_LARGE = "too_large"  # response body over the byte cap (after decompression)
    UNSUPPORTED_ENCODING = "unsupported_encoding"  # Content-Encoding we do not decode
    NOT_IMAGE = "not_image"  # bytes are not an image format we decode
    TOO_MANY_PIXELS = "too_many_pixels"  # declared size over the pixel cap (bomb guard)
    DECODE_ERROR = "decode_error"  # an image format, but truncated or corrupt
    TOO_SMALL = "too_small"  # shorter side below the minimum
    BAD_ASPECT = "bad_aspect"  # long side / short side above the maximum
    NEAR_CONSTANT = "near_constant"  # (almost) one colour: blank, or transparent everywhere
    INTERNAL = "internal"  # an unexpected exception; the message says which


class CrawlError(Exception):
    """A failure that becomes a pool row's error code and message."""

    def __init__(self, code: ErrorCode, message: str, http_status: int | None = None,
                 host_failure: bool = False) -> None:  # fmt: skip
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
        # the host never answered (no name, no connection, reset or silence before any
        # response): what a circuit breaker counts, unlike a bad URL on a live host
        self.host_failure = host_failure

    def __reduce__(self):  # cross process boundaries intact
        return (CrawlError, (self.code, self.message, self.http_status, self.host_failure))


class InputError(ValueError):
    """An input file that cannot be read as what its name says."""


class NoImagesError(InputError):
    """A crawl in which no URL gave an image: nothing for the stages after it."""


# what to do when every URL failed for mostly this reason
NO_IMAGE_HINTS = {
    ErrorCode.BLOCKED_PRIVATE_ADDRESS: "pass --allow-private-networks (or --allow-network "
    "CIDR) for a local web",
    ErrorCode.BLOCKED_DOMAIN: "the hosts are on fetch.domain_blocklist",
    ErrorCode.ROBOTS_DIRECTIVE: "the sites forbid AI use with X-Robots-Tag "
    "(--ignore-robots-directives overrides it)",
    ErrorCode.ROBOTS_TXT: "the sites' robots.txt disallow these paths "
    "(--ignore-robots-txt overrides it)",
    ErrorCode.DNS: "no host name resolved: is this machine online?",
    ErrorCode.CONNECT: "no host accepted a connection: is this machine online?",
    ErrorCode.UNSUPPORTED_SCHEME: "only http and https URLs are crawled",
}
