"""CLI: ``python -m pipelines.crawl --urls PATH... --out DIR [options]``.

Options not given as flags are set with ``--config FILE.yaml`` or ``--set key=value``
(keys as in :class:`curation.crawl.config.CrawlConfig`, e.g. ``fetch.max_retries=3``).

The crawler is imported when the command runs, not with this module: the crawl's worker
processes import the command's module again (as ``__mp_main__``) and need none of it. The
workers' server starts first, so that its imports run beside this process's own.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from curation.crawl.config import CrawlConfig
from curation.crawl.errors import InputError
from curation.local_runner import start_worker_server
from manifests.config import add_config_arguments, config_from_arguments, describe
from pipelines.cli import USER_ERRORS, add_network_arguments, network_overrides, run_cli

if TYPE_CHECKING:
    from curation.crawl.crawler import CrawlSummary

CRAWL_TASKS = "curation.crawl.shard"  # the module of the crawl's task function

# flag -> config key; each flag is a shorthand for --set KEY=VALUE
_FLAG_KEYS = {
    "shard_size": "shard_size",
    "processes": "processes",
    "url_column": "url_column",
    "concurrency": "fetch.concurrency",
    "per_host_concurrency": "fetch.per_host_concurrency",
    "timeout": "fetch.total_timeout_s",
    "max_retries": "fetch.max_retries",
    "domain_blocklist": "fetch.domain_blocklist",
    "user_agent_token": "fetch.user_agent_token",
    "max_side": "process.max_side",
    "min_side": "process.min_side",
    "max_aspect_ratio": "process.max_aspect_ratio",
    "jpeg_quality": "process.jpeg_quality",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.crawl", description=describe(__doc__))
    p.add_argument(
        "--urls",
        nargs="+",
        required=True,
        metavar="PATH",
        help="URL lists (.txt .csv .tsv .jsonl .parquet), .html pages, .warc[.gz]",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the crawl directory (shards, pool manifest, stats; a rerun resumes it)",
    )
    add_config_arguments(p, "a CrawlConfig YAML file", shorthands=_FLAG_KEYS)
    add_network_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> CrawlConfig:
    return config_from_arguments(CrawlConfig, args, network_overrides(args))


def format_summary(s: CrawlSummary) -> str:
    errors = sum(s.error_codes.values())
    lines = [
        f"crawl of {s.urls} URLs -> {s.out_dir}",
        f"  inputs: {s.input_records} records, {s.duplicates_removed} duplicates removed, "
        f"{len(s.input_problems)} unusable rows",
        f"  shards: {s.shards_total} ({s.shards_skipped} already complete)",
        f"  ok:     {s.ok} ({100 * s.ok / max(s.urls, 1):.1f}%)",
        f"  error:  {errors}",
    ]
    lines += [
        f"    {code:<24} {n}" for code, n in sorted(s.error_codes.items(), key=lambda x: -x[1])
    ]
    lines.append(
        f"  this run: {s.urls_this_run} URLs in {s.elapsed_s:.1f}s ({s.urls_per_s:.1f} URLs/s)"
    )
    lines.append(
        f"  manifest: {s.out_dir}/manifest/pool  images: {s.out_dir}/shards  "
        f"stats: {s.out_dir}/stats.json"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def crawl() -> str:
        config = config_from_args(args)
        start_worker_server(config.processes, CRAWL_TASKS)
        from curation.crawl.crawler import run_crawl  # noqa: PLC0415 - see the module doc

        summary = run_crawl(args.urls, args.out, config, progress=not args.no_progress)
        summary.require_images()
        return format_summary(summary)

    return run_cli(crawl, (*USER_ERRORS, InputError))


if __name__ == "__main__":
    sys.exit(main())
