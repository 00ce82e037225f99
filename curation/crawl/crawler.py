"""The crawl stage: download, process and commit the shards of a :class:`CrawlPlan`.

:func:`run_crawl` plans the inputs, claims the output directory, and hands the shards not
yet committed to a :class:`~curation.tasks.ShardRunner`, dealt into one lane per process
(a :func:`~curation.crawl.shard.crawl_lane` task each, which commits every shard as it
completes), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from curation.crawl.config import CrawlConfig
from curation.crawl.errors import NO_IMAGE_HINTS, ErrorCode, InputError, NoImagesError
from curation.crawl.fetch import Fetcher
from curation.crawl.plan import CrawlPlan, plan_crawl
from curation.crawl.shard import crawl_lane
from curation.crawl.urls import shard_source
from curation.local_runner import local_processes, run_locally
from curation.tasks import ShardRunner, ShardTasks
from manifests.atomic import write_bytes_atomic
from manifests.crawl_output import CrawlOutput
from manifests.job import changes, claim_directory, read_claim

log = logging.getLogger(__name__)

RUN_FILE = "crawl.json"


@dataclass
class CrawlSummary:
    out_dir: str
    urls: int
    input_records: int
    duplicates_removed: int
    input_problems: list[str]
    shards_total: int
    shards_skipped: int
    ok: int
    error_codes: dict[str, int]
    elapsed_s: float
    urls_this_run: int
    shards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def urls_per_s(self) -> float:
        return self.urls_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def require_images(self) -> None:
        """Raise NoImagesError, naming the commonest failures, if no URL gave an image."""
        if self.ok:
            return
        codes = sorted(self.error_codes.items(), key=lambda kv: -kv[1])
        failures = ", ".join(f"{n} {code}" for code, n in codes[:3])
        message = f"{self.out_dir}: none of the {self.urls} URLs gave an image ({failures})"
        hint = NO_IMAGE_HINTS.get(ErrorCode(codes[0][0])) if codes else None
        raise NoImagesError(f"{message}; {hint}" if hint else message)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        problems = self.input_problems
        data["input_problems"] = {"count": len(problems), "first": problems[:50]}
        data["error"] = sum(self.error_codes.values())
        data["urls_per_s_this_run"] = round(self.urls_per_s, 2)
        return data


def run_crawl(
    inputs: list[str | Path],
    out_dir: str | Path,
    config: CrawlConfig,
    progress: bool = True,
    runner: ShardRunner = run_locally,
) -> CrawlSummary:
    """Crawl every input URL into ``out_dir``; a rerun skips shards already complete.
    The pending shards are dealt into one :func:`crawl_lane` task per process; the fetch
    limits hold per machine, split evenly over the ``config.processes`` that crawl on one
    machine at once."""
    started = time.perf_counter()
    Fetcher(config.fetch)  # refuses a bad network or a missing blocklist here, not in a worker
    plan = plan_crawl(inputs, config.url_column)
    for problem in plan.problems[:20]:
        log.warning("input: %s", problem)
    if not plan.rows:
        raise InputError(f"{[str(i) for i in inputs]}: no URLs in the inputs "
                         f"({len(plan.problems)} unusable records)")  # fmt: skip
    output = CrawlOutput(out_dir)
    shards = plan.shards(config.shard_size)
    settings = config.output_settings()
    sources = [shard_source(s, settings) for s in shards]
    _claim_output(output, plan, config, sources)
    output.remove_partial()
    done = output.complete_shards()
    pending = [i for i in range(len(shards)) if i not in done]
    todo = sum(len(shards[i]) for i in pending)
    processes = min(local_processes(config.processes), max(len(pending), 1))
    task_config = _split_limits(config, processes)
    lanes = [[(i, shards[i], sources[i]) for i in pending[k::processes]] for k in range(processes)]
    tasks = [(lane, task_config, str(output.root)) for lane in lanes if lane]
    runner(ShardTasks(crawl_lane, tasks, "crawl", todo, "url", processes=processes), progress)
    all_stats = [output.shard_stats(i) for i in range(len(shards))]
    codes: dict[str, int] = {}
    for s in all_stats:
        for code, n in s.error_codes.items():
            codes[code] = codes.get(code, 0) + n
    summary = CrawlSummary(
        out_dir=str(output.root),
        urls=len(plan.rows),
        input_records=plan.input_records,
        duplicates_removed=plan.duplicates_removed,
        input_problems=plan.problems,
        shards_total=len(shards),
        shards_skipped=len(shards) - len(pending),
        ok=sum(s.ok for s in all_stats),
        error_codes=dict(sorted(codes.items())),
        elapsed_s=round(time.perf_counter() - started, 3),
        urls_this_run=todo,
        shards=[s.to_json() for s in all_stats],
    )
    stats_json = json.dumps(summary.to_json(), indent=1).encode()
    write_bytes_atomic(output.root / "stats.json", stats_json)
    return summary


def _split_limits(config: CrawlConfig, processes: int) -> CrawlConfig:
    fetch = config.fetch
    return replace(
        config,
        fetch=replace(
            fetch,
            concurrency=max(1, fetch.concurrency // processes),
            per_host_concurrency=max(1, fetch.per_host_concurrency // processes),
        ),
    )


def _claim_output(
    output: CrawlOutput, plan: CrawlPlan, config: CrawlConfig, sources: list[str]
) -> None:
    """Record what this directory is a crawl of, after removing the committed shards that
    were crawled from other URLs or settings (named in a warning): a rerun redoes exactly
    the shards that its inputs or settings change."""
    job = {"plan": plan.fingerprint(), "urls": len(plan.rows), "shard_size": config.shard_size,
           "config": json.loads(json.dumps(asdict(config)))}  # fmt: skip
    stale = output.remove_stale(sources)
    if stale:
        previous = read_claim(output.root, RUN_FILE)
        changed = [key for key, _, _ in changes(previous or {}, job)] or ["the shards' URLs"]
        log.warning("%s: %d committed shard(s) were crawled from other URLs or settings "
                    "(changed: %s); redoing them", output.root, len(stale),
                    ", ".join(changed[:8]))  # fmt: skip
    claim_directory(output.root, RUN_FILE, job, has_output=False)
