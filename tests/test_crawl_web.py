"""The crawler on the simulated web (pipelines.demo.simulated_web): every kind of host and
URL it has, with its own DNS server, latencies, 429s and failures, against ground truth."""

from __future__ import annotations

import socket
from collections import defaultdict
from dataclasses import replace

import pytest

from builders import small_crawl_config
from curation.crawl.crawler import run_crawl
from manifests.parquet_io import read_manifest
from manifests.schemas import POOL
from pipelines.demo.simulated_web import (
    HOST_FAILURES,
    URL_FAILURES,
    WebShape,
    free_udp_port,
    make_workload,
    simulated_web,
)

# what each kind of URL must end as; fetchable kinds end "ok"
EXPECTED = {
    "image": {"ok"},
    "cdn_image": {"ok"},
    "flaky": {"ok"},
    "redirect": {"ok"},
    "nxdomain": {"dns"},
    "silent_dns": {"dns", "timeout"},
    "blackhole": {"timeout", "host_unavailable"},
    "reset": {"connect", "host_unavailable"},
    "not_found": {"http_4xx"},
    "html": {"not_image"},
    "truncated": {"connect"},
    "oversized": {"too_large"},
    "trickle": {"timeout"},
    "noai": {"robots_directive"},
    "robots_disallowed": {"robots_txt"},
}

SHAPE = WebShape(
    urls=160, hosts=48, cdn_hosts=2, cdn_url_share=0.2, cdn_rate_per_s=8.0,
    dns_median_s=0.01, rtt_median_s=0.01, ttfb_median_s=0.02, image_size=(96, 72),
    distinct_images=8,
    host_failures={"nxdomain": 0.06, "silent_dns": 0.06, "blackhole": 0.06, "reset": 0.06},
    url_failures={"not_found": 0.05, "flaky": 0.05, "html": 0.04, "redirect": 0.05,
                  "truncated": 0.04, "oversized": 0.03, "trickle": 0.03, "noai": 0.04},
    robots_host_share=0.3, seed=5,
)  # fmt: skip


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _crawl(tmp_path, robots_txt: bool):
    port, dns_port = _free_tcp_port(), free_udp_port()
    workload = make_workload(SHAPE, port=port)
    (tmp_path / "urls.txt").write_text("".join(u.url + "\n" for u in workload.urls))
    config = small_crawl_config()
    config.processes, config.shard_size = 1, 64  # three shards on one frontier
    config.process.min_side = 64
    config.fetch = replace(config.fetch, total_timeout_s=2.5, per_host_concurrency=3,
                           nameservers=[f"127.0.0.1:{dns_port}"], dns_timeout_s=0.3,
                           robots_txt=robots_txt)  # fmt: skip
    web = simulated_web(workload, port, ("127.0.0.1", dns_port), bind_each_host=True)
    with web:
        run_crawl([tmp_path / "urls.txt"], tmp_path / "out", config, progress=False)
    rows = read_manifest([tmp_path / "out" / "manifest" / "pool"], POOL).to_pylist()
    return workload, web.stats, config, {r["url"]: r for r in rows}


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    return _crawl(tmp_path_factory.mktemp("web"), robots_txt=True)


def test_the_workload_has_every_kind_of_failure():
    kinds = make_workload(SHAPE).kinds()
    assert set(HOST_FAILURES) | set(URL_FAILURES) | {"cdn_image", "robots_disallowed"} <= set(kinds)


def test_every_url_ends_as_its_kind_says(crawled):
    workload, _, _, rows = crawled
    wrong = {}
    for u in workload.urls:
        row = rows[u.url]
        outcome = "ok" if row["status"] == "ok" else row["error_code"]
        if outcome not in EXPECTED[workload.kind_of(u)]:
            wrong[u.url] = (workload.kind_of(u), outcome, row["error_message"])
    assert wrong == {}
    ok = {url for url, r in rows.items() if r["status"] == "ok"}
    assert ok == workload.fetchable()  # recall 100%, and nothing it must not take


def test_the_crawl_is_polite_and_asks_dns_once(crawled):
    workload, stats, config, rows = crawled
    assert stats.statuses[429] > 0  # the CDN hosts were pushed to their limit...
    assert max(stats.peak_connections.values()) <= config.fetch.per_host_concurrency
    silent = {h.name for h in workload.hosts if h.kind == "silent_dns"}
    asked = {(name, qtype): n for (name, qtype), n in stats.dns_queries.items()
             if name not in silent}  # fmt: skip
    assert asked and max(asked.values()) == 1  # answers and NXDOMAIN both cached
    reachable = {h.name for h in workload.hosts if h.kind in ("ok", "reset", "blackhole")}
    assert stats.robots_txt_requests <= len(reachable)  # once per host at most
    assert all(r["fetch_s"] <= config.fetch.total_timeout_s + 0.5 for r in rows.values())


def test_a_shard_does_not_wait_for_its_slowest_url(crawled):
    _, _, _, rows = crawled
    done: defaultdict[int, list] = defaultdict(list)
    for r in rows.values():
        done[r["shard"]].append(r["fetch_time"])
    # one process crawled the three shards on one frontier: the next shard's URLs were
    # finishing while the previous shard waited on its slowest ones
    assert min(done[1]) < max(done[0]) and min(done[2]) < max(done[1])


def test_without_robots_txt_dead_hosts_meet_the_breaker_and_nxdomain_is_kept(tmp_path):
    workload, stats, _, rows = _crawl(tmp_path, robots_txt=False)
    disallowed = [u.url for u in workload.urls if workload.kind_of(u) == "robots_disallowed"]
    assert disallowed and all(rows[url]["status"] == "ok" for url in disallowed)
    assert stats.robots_txt_requests == 0
    # no robots.txt request to find a dead host first: its URLs meet the circuit breaker
    reset = [u.url for u in workload.urls if workload.kind_of(u) == "reset"]
    assert "host_unavailable" in {rows[url]["error_code"] for url in reset}
    # a name that does not exist is asked once per record type, whatever its URL count
    missing = {h.name for h in workload.hosts if h.kind == "nxdomain"}
    asked = [n for (name, _), n in stats.dns_queries.items() if name in missing]
    assert asked and max(asked) == 1
