"""Crawl settings, grouped as the stage's parts use them. YAML keys mirror these fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from curation.crawl.robots import DEFAULT_DISALLOWED
from manifests.config import bounded
from manifests.sources import file_digest

# how much runs at once: these change how fast a shard is crawled, not what it holds
PARALLELISM = {"processes", "threads_per_process", "concurrency", "per_host_concurrency"}


@dataclass
class FetchConfig:
    user_agent_token: str = "lvd-builder"
    user_agent: str = "Mozilla/5.0 (compatible; lvd-builder/0.1; image dataset research crawler)"
    # requests in flight, all hosts together (split over processes); the web is slow, so
    # this is in the thousands, apart from the decode threads (threads_per_process)
    concurrency: int = bounded(1024, at_least=1)
    # connections to one host at once (split over processes); a host starts at one, the
    # robots.txt request, and is halved when it starts answering 429
    per_host_concurrency: int = bounded(8, at_least=1)
    connect_timeout_s: float = bounded(5.0, above=0)
    read_timeout_s: float = bounded(10.0, above=0)  # longest silence between two reads
    # one deadline per URL, from its first try: DNS, connect, first byte, body, redirects,
    # retries and their waits (a retry that cannot start before it is not made)
    total_timeout_s: float = bounded(30.0, above=0)
    # tries after the first, on 502-504 and connection resets (a 429 spends none: it slows
    # the host, the deadline bounds it)
    max_retries: int = bounded(2, at_least=0)
    backoff_base_s: float = 0.5  # delay before retry n is base * 2**n, jittered
    max_retry_after_s: float = 30.0  # a longer Retry-After is not waited for
    # this many failures of the host itself in a row (no name, no connection, no response)
    # open its circuit breaker: its URLs fail at once (host_unavailable) until, after the
    # cooldown, one probe may try again
    breaker_failures: int = bounded(3, at_least=1)
    breaker_cooldown_s: float = bounded(60.0, at_least=0)
    robots_txt: bool = True  # fetch each host's robots.txt once and honour it (RFC 9309)
    # DNS: answers and failures are kept per name (a failure for the shorter time)
    nameservers: list[str] = field(default_factory=list)  # "IP" or "IP:PORT"; [] = system's
    dns_timeout_s: float = bounded(2.0, above=0)  # per try, two tries
    dns_cache_s: float = bounded(3600.0, at_least=0)
    dns_negative_cache_s: float = bounded(300.0, at_least=0)
    max_redirects: int = bounded(5, at_least=0)
    max_bytes: int = bounded(16 * 1024 * 1024, at_least=1)  # response body cap, after decompression
    disallowed_robots_directives: list[str] = field(default_factory=lambda: [*DEFAULT_DISALLOWED])
    allow_private_networks: bool = False
    allowed_networks: list[str] = field(default_factory=list)  # CIDRs allowed even if private
    domain_blocklist: str | None = None  # path: one domain per line


@dataclass
class ProcessConfig:
    # declared width * height above this is refused undecoded
    max_pixels: int = bounded(40_000_000, at_least=1)
    min_side: int = bounded(64, at_least=1)
    max_aspect_ratio: float = bounded(4.0, at_least=1)
    # resize (keeping aspect) only if the long side is larger
    max_side: int = bounded(1024, at_least=1)
    jpeg_quality: int = bounded(95, at_least=1, at_most=100)
    # an image whose pixels vary less than this (standard deviation of 0-255 values, the
    # most varied channel) is refused as near-constant: blank, or transparent everywhere
    min_pixel_std: float = bounded(2.0, at_least=0)


@dataclass
class CrawlConfig:
    fetch: FetchConfig = field(default_factory=FetchConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    url_column: str = "url"  # for csv, tsv, jsonl and parquet inputs
    shard_size: int = bounded(10_000, at_least=1)  # URLs per output shard
    # shards crawled at once, one process each (this one too); 0 = per core
    processes: int = bounded(0, at_least=0)
    # decode/resize threads beside each process's event loop
    threads_per_process: int = bounded(2, at_least=1)

    def output_settings(self) -> dict[str, Any]:
        """Every setting that changes what a shard holds (all but :data:`PARALLELISM`),
        with the domain block list's content: a shard crawled with other ones is redone."""
        settings = asdict(self)
        for part in (settings, settings["fetch"]):
            for key in PARALLELISM & part.keys():
                del part[key]
        if self.fetch.domain_blocklist:
            settings["fetch"]["domain_blocklist"] = file_digest(self.fetch.domain_blocklist)
        return settings
