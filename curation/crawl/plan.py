"""From input files to the ordered, de-duplicated list of URLs that becomes the pool.

The plan is deterministic for a given set of inputs, so shard ``i`` always holds the same
URLs and a rerun can skip the shards that are complete.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from curation.crawl.errors import CrawlError
from curation.crawl.inputs import read_records
from curation.crawl.urls import PlannedUrl, normalize_url, url_id


@dataclass
class CrawlPlan:
    rows: list[PlannedUrl]
    input_records: int = 0
    duplicates_removed: int = 0
    problems: list[str] = field(default_factory=list)

    def shards(self, shard_size: int) -> list[list[PlannedUrl]]:
        return [self.rows[i : i + shard_size] for i in range(0, len(self.rows), shard_size)]

    def fingerprint(self) -> str:
        """Identifies the ordered URL list, so a rerun can tell that its inputs changed."""
        h = hashlib.sha256()
        for row in self.rows:
            h.update(row.id.encode())
        return h.hexdigest()


def plan_crawl(inputs: list[str | Path], url_column: str = "url") -> CrawlPlan:
    """Read every input, normalize each URL, keep the first occurrence of each."""
    plan = CrawlPlan(rows=[])
    seen: set[str] = set()
    for record in read_records(inputs, url_column, plan.problems.append):
        plan.input_records += 1
        try:
            url, error = normalize_url(record.url, base=record.base), None
        except CrawlError as exc:
            url, error = record.url, exc
        uid = url_id(url)
        if uid in seen:
            plan.duplicates_removed += 1
            continue
        seen.add(uid)
        plan.rows.append(PlannedUrl(uid, url, record.page_url, error))
    return plan
