"""Crawl settings, grouped as the stage's parts use them. YAML keys mirror these fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from curation.crawl.robots import DEFAULT_DISALLOWED


@dataclass
class FetchConfig:
    user_agent_token: str = "lvd-builder"
    user_agent: str = "Mozilla/5.0 (compatible; lvd-builder/0.1; image dataset research crawler)"
    concurrency: int = 256  # requests in flight, all hosts together (split over processes)
    per_host_concurrency: int = 16  # (split over processes)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0  # longest silence between two reads
    total_timeout_s: float = 30.0  # one attempt, redirects and body included
    max_retries: int = 2  # on connection errors, 5xx and 429
    backoff_base_s: float = 0.5  # delay before retry n is base * 2**n, jittered
    max_retry_after_s: float = 30.0  # a longer Retry-After is not waited for
    max_redirects: int = 5
    max_bytes: int = 16 * 1024 * 1024  # response body cap, after decompression
    disallowed_robots_directives: list[str] = field(default_factory=lambda: [*DEFAULT_DISALLOWED])
    allow_private_networks: bool = False
    allowed_networks: list[str] = field(default_factory=list)  # CIDRs allowed even if private
    domain_blocklist: str | None = None  # path: one domain per line


@dataclass
class ProcessConfig:
    max_pixels: int = 40_000_000  # declared width * height above this is refused undecoded
    min_side: int = 64
    max_aspect_ratio: float = 4.0
    max_side: int = 1024  # resize (keeping aspect) only if the long side is larger
    jpeg_quality: int = 95


@dataclass
class CrawlConfig:
    fetch: FetchConfig = field(default_factory=FetchConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    url_column: str = "url"  # for csv, tsv, jsonl and parquet inputs
    shard_size: int = 10_000  # URLs per output shard
    processes: int = 0  # shards crawled at once, one process each (this one too); 0 = per core
    threads_per_process: int = 2  # decode/resize threads beside each process's event loop
