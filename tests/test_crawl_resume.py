"""Resume: a crawl killed with SIGKILL and rerun ends with exactly one row per URL."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.crawl.crawler import run_crawl
from manifests.image_shards import iter_samples, tar_shard_path
from manifests.parquet_io import read_manifest
from manifests.schemas import POOL
from pipelines.demo.loopback_web import LoopbackWeb, Route
from pipelines.demo.synthetic_images import encode, make_photo

N_URLS = 240
SHARD = 20


@pytest.fixture(scope="module")
def slow_web():
    body = encode(make_photo(11, 320, 240))
    routes = {f"/img/{i}.jpg": Route(body=body, delay_s=0.03) for i in range(N_URLS)}
    routes["/img/13.jpg"] = Route(status=404)  # some failures must survive the resume too
    with LoopbackWeb(routes) as web:
        yield web


def _crawl_cmd(urls: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "pipelines.crawl", "--urls", str(urls), "--out", str(out),
        "--allow-network", "127.0.0.0/8", "--shard-size", str(SHARD), "--processes", "1",
        "--concurrency", "4", "--no-progress",
    ]  # fmt: skip


def _wait_for_shards(pool_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pool_dir.is_dir() and len(list(pool_dir.glob("*.parquet"))) >= n:
            return
        assert proc.poll() is None, "crawl ended before it could be killed"
        time.sleep(0.02)
    raise AssertionError(f"no {n} shards within {timeout}s")


def test_kill_9_then_rerun_loses_and_duplicates_nothing(slow_web, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(slow_web.url(f"/img/{i}.jpg") for i in range(N_URLS)))
    out = tmp_path / "out"
    proc = subprocess.Popen(_crawl_cmd(urls, out), start_new_session=True)
    _wait_for_shards(out / "manifest" / "pool", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the crawler and its worker processes
    proc.wait()
    done_before = len(list((out / "manifest" / "pool").glob("*.parquet")))
    assert 3 <= done_before < N_URLS // SHARD

    rerun = subprocess.run(_crawl_cmd(urls, out), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({done_before} already complete)" in rerun.stdout

    table = read_manifest([out / "manifest" / "pool"], POOL)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N_URLS
    assert set(table.column("url").to_pylist()) == set(urls.read_text().split())
    rows = table.to_pylist()
    assert [r["error_code"] for r in rows if r["status"] != "ok"] == ["http_4xx"]
    stored = {}
    for shard in sorted({r["shard"] for r in rows}):
        for key, sample in iter_samples(tar_shard_path(out / "shards", shard)):
            assert key not in stored, f"{key} stored twice"
            stored[key] = hashlib.sha256(sample["jpg"]).hexdigest()
    assert stored == {r["key"]: r["sha256"] for r in rows if r["status"] == "ok"}
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def _image_hits(web) -> int:
    """Requests for images: each crawl process also asks once for /robots.txt."""
    return sum(n for path, n in web.hits.items() if path != "/robots.txt")


def test_appended_urls_redo_only_the_shards_they_change(slow_web, tmp_path, crawl_config):
    urls = tmp_path / "urls.txt"
    listed = [slow_web.url(f"/img/{i}.jpg?append") for i in range(40)]  # shards of 16, 16, 8
    urls.write_text("\n".join(listed))
    run_crawl([urls], tmp_path / "out", crawl_config, progress=False)
    hits = _image_hits(slow_web)
    urls.write_text("\n".join([*listed, slow_web.url("/img/40.jpg?append")]))
    crawl_config.processes = 1  # how many run at once: not a change of what a shard holds
    second = run_crawl([urls], tmp_path / "out", crawl_config, progress=False)
    assert second.shards_skipped == 2 and second.urls_this_run == 9  # the last shard, redone
    assert _image_hits(slow_web) - hits == 9
    table = read_manifest([tmp_path / "out" / "manifest" / "pool"], POOL)
    assert sorted(table.column("url").to_pylist()) == sorted(urls.read_text().split())


def test_a_changed_setting_redoes_every_shard_it_changes(slow_web, tmp_path, crawl_config):
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(slow_web.url(f"/img/{i}.jpg?side") for i in range(20)))
    run_crawl([urls], tmp_path / "out", crawl_config, progress=False)
    crawl_config.process.max_side = 128
    second = run_crawl([urls], tmp_path / "out", crawl_config, progress=False)
    assert second.shards_skipped == 0 and second.urls_this_run == 20
    rows = read_manifest([tmp_path / "out" / "manifest" / "pool"], POOL).to_pylist()
    assert {max(r["width"], r["height"]) for r in rows if r["status"] == "ok"} == {128}
    stored = [s for shard in (0, 1) for _, s in iter_samples(tar_shard_path(tmp_path / "out" /
              "shards", shard))]  # fmt: skip
    assert len(stored) == 19 and {r["sha256"] for r in rows if r["sha256"]} == {
        hashlib.sha256(s["jpg"]).hexdigest() for s in stored
    }


def test_rerun_of_a_complete_crawl_downloads_nothing(slow_web, tmp_path, crawl_config):
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(slow_web.url(f"/img/{i}.jpg?again") for i in range(40)))
    first = run_crawl([urls], tmp_path / "out", crawl_config, progress=False)
    hits = sum(slow_web.hits.values())
    second = run_crawl([urls], tmp_path / "out", crawl_config, progress=False)
    assert sum(slow_web.hits.values()) == hits
    assert second.shards_skipped == second.shards_total == first.shards_total
    assert (second.ok, second.error_codes) == (first.ok, first.error_codes)


def test_a_shard_that_cannot_commit_ends_the_run_and_a_rerun_completes(
    slow_web, tmp_path, crawl_config
):
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(slow_web.url(f"/img/{i}.jpg?commit") for i in range(64)))
    out = tmp_path / "out"
    blocker = tar_shard_path(out / "shards", 2)  # a directory where shard 2's tar must go
    (blocker / "occupied").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):  # from whichever process took shard 2
        run_crawl([urls], out, crawl_config, progress=False)
    assert not (out / "manifest" / "pool" / "00002.parquet").exists()

    (blocker / "occupied").rmdir()
    blocker.rmdir()
    summary = run_crawl([urls], out, crawl_config, progress=False)
    assert (summary.shards_total, summary.ok, summary.error_codes) == (4, 63, {"http_4xx": 1})
    ids = read_manifest([out / "manifest" / "pool"], POOL).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 64
