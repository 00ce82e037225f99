"""Counts between stages: a build stops when a stage's output does not add up."""

from __future__ import annotations

import re

import pytest

from pipelines.reconcile import CountMismatchError, check_counts

CRAWL = {"urls": 10, "ok": 7, "error_codes": {"http_4xx": 2, "timeout": 1}}
FUNNEL = {"raw": 7, "after_exact": 6, "after_hash": 5, "after_copy": 5, "after_relative": 5}
HASH = {"funnel": FUNNEL, "kept": 6}  # one image per exact group
SAFETY = {"images": 6, "kept": 5, "nsfw": 1, "errors": 0}
EMBED = {"efficientnet_lite0": {"embedded": 4, "failed": 1, "shards_skipped": 0}}
DEDUP = {"funnel": {**FUNNEL, "after_copy": 4, "after_relative": 3}, "reasons": {}}


def test_a_build_whose_counts_add_up_passes():
    check_counts("crawl", CRAWL, {})
    check_counts("hash", HASH, {"crawl": CRAWL})
    check_counts("safety", SAFETY, {"hash": HASH})
    check_counts("embed_pool", EMBED, {"safety": SAFETY})
    check_counts("dedup", DEDUP, {"hash": HASH, "embed_pool": EMBED})
    done = {"dedup": DEDUP, "embed_pool": EMBED, "safety": SAFETY}
    # one kept image may have failed to embed, one may have been dropped as NSFW
    for candidates in (1, 2, 3):
        check_counts("retrieve", {"images": 9, "candidates": candidates}, done)
    check_counts("report", {"report": "x"}, {})


@pytest.mark.parametrize(
    "stage, summary, inputs, message",
    [
        ("crawl", {**CRAWL, "ok": 6}, {}, "6 images + 3 failed URLs != 10 URLs"),
        ("hash", {**HASH, "funnel": {**FUNNEL, "raw": 6, "after_exact": 5}}, {"crawl": CRAWL},
         "6 images hashed != 7 images crawled"),
        ("hash", {**HASH, "kept": 4}, {"crawl": CRAWL},
         "4 rows in the kept manifest != 6 exact-group representatives"),
        ("hash", {**HASH, "funnel": {**FUNNEL, "after_hash": 7}}, {"crawl": CRAWL},
         "after_hash (7) holds more images than after_exact (6)"),
        ("safety", {**SAFETY, "kept": 4}, {"hash": HASH},
         "4 kept + 1 NSFW + 0 unreadable != 6 images checked"),
        ("safety", {**SAFETY, "images": 5, "kept": 4}, {"hash": HASH},
         "5 images checked != 6 exact-group representatives"),
        ("embed_pool", {"m": {"embedded": 3, "failed": 1}}, {"safety": SAFETY},
         "m: 3 embedded + 1 failed != 5 images to embed (the images safety kept)"),
        ("dedup", {**DEDUP, "funnel": {**DEDUP["funnel"], "raw": 8}}, {"hash": HASH},
         "8 images, 6 after exact dedup != the hash stage's 7, 6"),
        ("retrieve", {"images": 3, "candidates": 0},
         {"dedup": DEDUP, "embed_pool": EMBED, "safety": SAFETY},
         "0 retrieval candidates, but dedup kept 3 images of which 1 could not be embedded "
         "and at most 1 were dropped by safety"),
    ],
)  # fmt: skip
def test_a_stage_that_does_not_add_up_stops_the_build(stage, summary, inputs, message):
    pattern = rf"stage {stage}: counts do not reconcile: .*{re.escape(message)}"
    with pytest.raises(CountMismatchError, match=pattern):
        check_counts(stage, summary, inputs)
