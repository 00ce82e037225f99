"""Crawl a web shaped like the real one, ours beside img2dataset, on the same cores.

The web is ``pipelines.demo.simulated_web``: about 20,000 URLs over about 8,000 hosts
(Zipf popularity, a few CDN hosts that answer 429 past 40 requests/s, half of them with
Retry-After), lognormal latencies (first DNS answer 40 ms, RTT 60 ms, time to first byte
120 ms, paced bandwidth) and a failure mix: NXDOMAIN and silent DNS hosts, resets,
blackholes, 1 KB/s trickles, 404s, 503s that succeed on a later try, HTML, redirects,
truncated and oversized bodies, ``X-Robots-Tag: noai`` and robots.txt-disallowed paths.
The simulator knows which URLs a well-behaved client can fetch (the ground truth).

The whole benchmark runs in a mount and network namespace of its own (``unshare``, as
root): only a loopback interface exists, every 127.a.b.c is a host, and a private
/etc/resolv.conf sends both tools to the web's DNS server at 127.0.0.53. Servers and
tools share this machine's cores, so each run starts a fresh web.

Two scenarios, the same URL list for both tools:
  - network: 160x120 JPEGs stored as they come (img2dataset ``--resize_mode no``);
  - e2e: 1024x768 JPEGs resized to 512 on the long side, as the recipe does.
img2dataset runs with its defaults (256 threads, timeout 10, no retries; one process
per core) and a small grid searched one axis at a time: threads 128/512/1024, then
timeout 5 and retries 1 at the best thread count. Its downloads are timed by wrapping
``img2dataset.downloader.download_image_with_retry`` (no change to what it does).

Figures per run: successes/s (fetchable URLs stored, over the wall clock), recall against
the ground truth, images taken that policy forbids, CPU-seconds per 1,000 images, p50/p99
seconds per URL, the tail (last URL done minus 99% done), peak connections per host, 429s
received, DNS queries per host per record type, peak RSS of the tool's processes.

    sudo python benchmarks/crawl_web.py [--scenario network e2e] [--urls 20000]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
from crawl_throughput import IMG2DATASET_RESIZE, MAX_SIDE, ensure_img2dataset, img2dataset_flags

from manifests.config import describe, parse_with_quick
from manifests.parquet_io import read_manifest
from manifests.schemas import POOL
from pipelines.demo.simulated_web import WebShape, WebStats, Workload, make_workload, simulated_web

ROOT = Path(__file__).resolve().parents[1]
DNS = ("127.0.0.53", 53)
SCENARIOS = {"network": (160, 120), "e2e": (1024, 768)}

# img2dataset, timed: each download's URL, start, end and success, one file per process
I2D_WRAPPER = """
import json, os, time
import img2dataset.downloader as downloader

_download = downloader.download_image_with_retry
_log = os.path.join(os.environ["I2D_TIMING_DIR"], f"{os.getpid()}.jsonl")


def _timed(row, *args, **kwargs):
    start = time.time()
    result = _download(row, *args, **kwargs)
    with open(_log, "a") as f:
        f.write(json.dumps([row[1], start, time.time(), result[1] is not None]) + "\\n")
    return result


downloader.download_image_with_retry = _timed

if __name__ == "__main__":
    import fire
    from img2dataset import download

    fire.Fire(download)
"""


# ------------------------------------------------------------------ the namespace


def enter_namespace(argv: list[str]) -> None:
    """Re-run this script in new mount and network namespaces (never returns)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit("crawl_web: needs root and unshare (util-linux) for its own network "
                 "namespace and resolv.conf")  # fmt: skip
    script = str(Path(__file__).resolve())
    os.execvp("unshare", ["unshare", "--mount", "--net", sys.executable, script, *argv,
                          "--in-namespace"])  # fmt: skip


def prepare_namespace(workdir: Path) -> None:
    """Loopback up, /etc/resolv.conf pointing at the web's DNS, many file descriptors."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    ifreq = "16sH22x"  # struct ifreq: the interface's name, its flags
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        asked = fcntl.ioctl(s, siocgifflags, struct.pack(ifreq, b"lo", 0))
        flags = struct.unpack(ifreq, asked)[1]
        fcntl.ioctl(s, siocsifflags, struct.pack(ifreq, b"lo", flags | iff_up))
    resolv = workdir / "resolv.conf"
    resolv.write_text(f"nameserver {DNS[0]}\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))


# ------------------------------------------------------------------ running a tool


class _Sampler(threading.Thread):
    """Peak RSS and CPU time of a process and all its descendants, sampled every 0.1 s
    (a process's CPU time as last seen: what it spent in its last 0.1 s is missed)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0, threading.Event()
        self.cpu: dict[int, float] = {}

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stopped.wait(0.1):
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                        times = p.cpu_times()
                        self.cpu[p.pid] = times.user + times.system
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)


def run_measured(cmd: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``cmd``; its wall time, its process tree's CPU time and peak RSS."""
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = _Sampler(proc.pid)
    sampler.start()
    _, stderr = proc.communicate(timeout=timeout)
    end = time.time()
    sampler.stopped.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    return {"start": start, "end": end, "cpu_s": sampler.cpu_s,
            "peak_rss_mb": sampler.peak / 2**20}  # fmt: skip


def run_ours(urls: Path, out: Path, args: argparse.Namespace, scenario: str) -> tuple[dict, dict]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipelines.crawl", "--urls", str(urls), "--out", str(out),
           "--allow-network", "127.0.0.0/8", "--processes", str(args.ours_processes),
           "--shard-size", str(args.shard_size), "--timeout", str(args.deadline),
           "--max-side", str(MAX_SIDE if scenario == "e2e" else 4096), "--no-progress",
           *[a for kv in args.ours_set for a in ("--set", kv)]]  # fmt: skip
    run = run_measured(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = read_manifest([out / "manifest" / "pool"], POOL).to_pylist()
    outcomes = {}
    for r in rows:
        done = r["fetch_time"].timestamp() if r["fetch_time"] else run["end"]
        outcomes[r["url"]] = (r["status"] == "ok", r["fetch_s"] or 0.0, done)
    config = json.loads((out / "crawl.json").read_text())["config"]
    settings = {"processes": args.ours_processes, "deadline_s": args.deadline,
                "concurrency": config["fetch"]["concurrency"],
                "per_host_concurrency": config["fetch"]["per_host_concurrency"],
                "threads_per_process": config["threads_per_process"],
                "robots_txt": config["fetch"]["robots_txt"]}  # fmt: skip
    return run, {"outcomes": outcomes, "settings": settings}


def run_img2dataset(urls: Path, out: Path, args: argparse.Namespace, scenario: str,
                    threads: int, timeout: int, retries: int) -> tuple[dict, dict]:  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    timing = out.with_name(out.name + "-timing")
    shutil.rmtree(timing, ignore_errors=True)
    timing.mkdir(parents=True)
    wrapper = args.workdir / "img2dataset_timed.py"
    wrapper.write_text(I2D_WRAPPER)
    resize = ["--resize_mode", "no", "--skip_reencode", "True"]
    if scenario == "e2e":
        resize = IMG2DATASET_RESIZE
    flags = img2dataset_flags(urls, out, args.processes, threads, args.shard_size)
    cmd = [str(args.img2dataset_python), str(wrapper), *flags, *resize,
           "--timeout", str(timeout), "--retries", str(retries)]  # fmt: skip
    run = run_measured(cmd, env={**os.environ, "I2D_TIMING_DIR": str(timing)})
    outcomes = {}
    for f in timing.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            url, start, end, _ = json.loads(line)
            outcomes[url] = (False, end - start, end)
    for f in out.glob("*.parquet"):  # what it stored, after its own decode/resize
        table = pq.read_table(f, columns=["url", "status"]).to_pylist()
        for r in table:
            ok, seconds, end = outcomes.get(r["url"], (False, 0.0, run["end"]))
            outcomes[r["url"]] = (r["status"] == "success", seconds, end)
    settings = {"processes": args.processes, "thread_count": threads, "timeout": timeout,
                "retries": retries}  # fmt: skip
    return run, {"outcomes": outcomes, "settings": settings}


# ------------------------------------------------------------------ figures


def figures(workload: Workload, run: dict, result: dict, web: WebStats) -> dict:
    fetchable = workload.fetchable()
    outcomes = result["outcomes"]
    ok = {url for url, (good, _, _) in outcomes.items() if good}
    good = ok & fetchable
    wall = run["end"] - run["start"]
    seconds = sorted(s for _, s, _ in outcomes.values())
    ends = sorted(end - run["start"] for _, _, end in outcomes.values())
    return {
        "settings": result["settings"],
        "successes_per_s": round(len(good) / wall, 1),
        "recall": round(len(good) / len(fetchable), 4),
        "successes": len(good),
        "taken_against_policy": len(ok - fetchable),
        "urls_seen": len(outcomes),
        "wall_s": round(wall, 1),
        "cpu_s_per_1000_images": round(1000 * run["cpu_s"] / max(len(good), 1), 2),
        "p50_s_per_url": round(_quantile(seconds, 0.5), 3),
        "p99_s_per_url": round(_quantile(seconds, 0.99), 3),
        "tail_s": round(ends[-1] - _quantile(ends, 0.99), 2) if ends else None,
        "peak_connections_per_host": max(web.peak_connections.values(), default=0),
        "http_429_received": web.statuses[429],
        "dns_queries_per_host": web.dns_per_host_and_type(),
        "peak_rss_mb": round(run["peak_rss_mb"], 1),
    }


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def measure(tool, workload: Workload, urls: Path, out: Path, *params) -> dict:
    web = simulated_web(workload, 80, DNS)
    with web:
        run, result = tool(urls, out, *params)
    row = figures(workload, run, result, web.stats)
    print(json.dumps({"run": out.name, **row}), flush=True)
    return row


def scenario_runs(args: argparse.Namespace, scenario: str) -> dict:
    shape = replace(WebShape(urls=args.urls, hosts=args.hosts, seed=args.seed),
                    image_size=SCENARIOS[scenario])  # fmt: skip
    workload = make_workload(shape)
    urls = args.workdir / f"urls-{scenario}.txt"
    urls.write_text("".join(u.url + "\n" for u in workload.urls))
    work = args.workdir / scenario
    ours = measure(run_ours, workload, urls, work / "ours", args, scenario)
    result = {"web": {"urls": len(workload.urls), "hosts": len(workload.hosts),
                      "fetchable": len(workload.fetchable()), "kinds": dict(workload.kinds())},
              "ours": ours}  # fmt: skip
    if args.skip_img2dataset:
        return result

    def i2d(threads: int, timeout: int, retries: int) -> dict:
        name = f"img2dataset-t{threads}-to{timeout}-r{retries}"
        return measure(run_img2dataset, workload, urls, work / name, args, scenario,
                       threads, timeout, retries)  # fmt: skip

    if args.img2dataset_configs:  # given settings only, e.g. another scenario's best
        grid = [i2d(*map(int, c.split(":"))) for c in args.img2dataset_configs]
    else:
        grid = [i2d(256, 10, 0)]  # its defaults
        if args.grid:
            grid += [i2d(t, 10, 0) for t in (128, 512, 1024)]
            best = max(grid, key=lambda r: r["successes_per_s"])["settings"]["thread_count"]
            grid += [i2d(best, 5, 0), i2d(best, 10, 1)]
    best = max(grid, key=lambda r: r["successes_per_s"])
    result.update(
        img2dataset_runs=grid,
        img2dataset_best=best["settings"],
        ratio_successes_per_s=round(ours["successes_per_s"] / best["successes_per_s"], 2),
        recall_points_over_best=round(100 * (ours["recall"] - best["recall"]), 2),
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS), default=["network", "e2e"])
    p.add_argument("--urls", type=int, default=20_000)
    p.add_argument("--hosts", type=int, default=8_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", type=float, default=10.0, help="our per-URL deadline, s")
    p.add_argument("--processes", type=int, default=os.cpu_count(), help="img2dataset's")
    p.add_argument("--ours-processes", type=int, default=1,
                   help="one event loop (its decode threads use every core); more processes "
                        "each keep their own DNS cache")  # fmt: skip
    p.add_argument("--shard-size", type=int, default=10_000, help="URLs per shard, both tools")
    p.add_argument("--ours-set", nargs="*", default=["fetch.per_host_concurrency=32"],
                   metavar="KEY=VALUE", help="our crawler's settings")  # fmt: skip
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-bench-crawl-web"))
    p.add_argument("--img2dataset-python", type=Path, default=None,
                   help="a python with img2dataset (default: a venv under --workdir)")  # fmt: skip
    p.add_argument("--no-grid", dest="grid", action="store_false",
                   help="img2dataset's defaults only")  # fmt: skip
    p.add_argument("--img2dataset-configs", nargs="*", default=[], metavar="T:TIMEOUT:R",
                   help="run img2dataset with these threads:timeout:retries only")  # fmt: skip
    p.add_argument("--skip-img2dataset", action="store_true")
    p.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parse_with_quick(p, {"urls": 300, "hosts": 120, "scenario": ["network"],
                                "skip_img2dataset": True, "shard_size": 100,
                                "deadline": 3.0})  # fmt: skip
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.in_namespace:
        if not args.skip_img2dataset and args.img2dataset_python is None:
            venv = args.workdir / "venv-img2dataset"
            ensure_img2dataset(venv)
            sys.argv += ["--img2dataset-python", str(venv / "bin" / "python")]
        enter_namespace(sys.argv[1:])
    prepare_namespace(args.workdir)
    results = {"date": datetime.now().isoformat(timespec="minutes"), "cores": os.cpu_count(),
               "processes": args.processes, "deadline_s": args.deadline}  # fmt: skip
    for scenario in args.scenario:
        results[scenario] = scenario_runs(args, scenario)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
