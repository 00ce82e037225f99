"""Crawl throughput on this machine: our crawler against the pixel limit and img2dataset.

Serves N generated photo-like images (640x480, 90% JPEG, 10% PNG) from a loopback server
in a separate process, then measures on the same images, in the same run:
  - pixel_limit: decode + resize to 512 + encode alone, one process per core (the ceiling),
    measured just before and just after each crawl of ours and averaged;
  - ours: ``python -m pipelines.crawl`` over the URL list, rated over the crawl's own elapsed
    time (stats.json) for the pixel-limit ratio, and over the wall clock, interpreter start-up
    included, for the img2dataset ratio (a lane's shards overlap, so their own times do not
    add up to a worker's);
  - img2dataset: the same URL list, cores and resize settings (wall clock, start-up included),
    installed from PyPI into its own virtual environment under --workdir.
Prints one JSON object; the ratios (medians of the repeats' paired ratios) are what to
compare across machines.

The server is nginx (installed with apt-get when missing and run as root): on a crawl the
servers' CPU is someone else's, and on this machine's cores our Python loopback server
(the fallback, ``--server aiohttp``) costs about 0.4 ms of CPU per image, 7% of a crawl's.

    python benchmarks/crawl_throughput.py [--n 5000] [--workdir DIR] [--skip-img2dataset]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from curation.crawl.config import ProcessConfig
from curation.crawl.process import init_worker, process_image
from manifests.config import describe, parse_with_quick
from pipelines.apt import apt_install
from pipelines.demo.loopback_web import serve_in_process
from pipelines.demo.synthetic_images import encode, make_photo

MAX_SIDE = 512


def _write_image(args: tuple[Path, int]) -> str:
    directory, i = args
    fmt, ext = ("PNG", "png") if i % 10 == 9 else ("JPEG", "jpg")
    name = f"{i:06d}.{ext}"
    path = directory / name
    if not path.exists():
        path.write_bytes(encode(make_photo(i), fmt))
    return name


def generate_images(directory: Path, n: int, workers: int) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_write_image, [(directory, i) for i in range(n)], chunksize=64))


def _process_file(path: str) -> int:
    return len(process_image(Path(path).read_bytes(), ProcessConfig(max_side=MAX_SIDE)).data)


def pixel_limit(directory: Path, names: list[str], workers: int) -> dict:
    """Decode + resize + encode only, files already in memory's page cache."""
    paths = [str(directory / n) for n in names]
    with ProcessPoolExecutor(workers, initializer=init_worker) as pool:
        list(pool.map(_process_file, paths[:64]))  # warm the workers
        start = time.perf_counter()
        list(pool.map(_process_file, paths, chunksize=16))
        elapsed = time.perf_counter() - start
    return {"images_per_s": round(len(paths) / elapsed, 1), "elapsed_s": round(elapsed, 2)}


NGINX_CONF = """daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path {prefix}/tmp;
  types {{ image/jpeg jpg; image/png png; }}
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


class serve_with_nginx:  # noqa: N801 - used like a function, as serve_in_process
    """Serve every file of ``directory`` at ``/NAME`` from an nginx of our own on loopback."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> int:
        self._prefix = Path(tempfile.mkdtemp(prefix="lvd-bench-nginx-"))
        with socket.socket() as probe:  # a free port (nginx binds it a moment later)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        conf = self._prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self._prefix, port=port, root=self.directory))
        cmd = ["nginx", "-c", str(conf), "-p", str(self._prefix), "-e", "stderr"]
        self._proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"nginx did not serve on 127.0.0.1:{port}: {self._stderr()}")

    def _stderr(self) -> str:
        return self._proc.stderr.read().decode(errors="replace").strip() if self._proc else ""

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        shutil.rmtree(self._prefix, ignore_errors=True)


def run_ours(url_file: Path, out: Path, workers: int, shard_size: int, extra: list[str]) -> dict:
    cmd = [
        sys.executable, "-m", "pipelines.crawl", "--urls", str(url_file), "--out", str(out),
        "--allow-network", "127.0.0.0/8", "--max-side", str(MAX_SIDE), "--processes",
        str(workers), "--shard-size", str(shard_size), "--no-progress", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    stats = json.loads((out / "stats.json").read_text())
    return {
        "images_per_s": round(stats["ok"] / stats["elapsed_s"], 1),  # the crawl itself
        "images_per_s_wall": round(stats["ok"] / wall, 1),  # with interpreter start-up
        "success_rate": round(stats["ok"] / stats["urls"], 4),
        "wall_s": round(wall, 2),
        "crawl_s": stats["elapsed_s"],
    }


def ensure_img2dataset(venv: Path) -> Path:
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "img2dataset"]
        subprocess.run(pip, check=True)
    return exe


# img2dataset resizing as our crawl does: the long side to MAX_SIDE, never up, JPEG 95
IMG2DATASET_RESIZE = ["--image_size", str(MAX_SIDE), "--resize_mode", "keep_ratio_largest",
                      "--resize_only_if_bigger", "True", "--encode_quality", "95"]  # fmt: skip


def img2dataset_flags(
    url_file: Path, out: Path, processes: int, threads: int, shard_size: int
) -> list[str]:
    """img2dataset's flags for a txt URL list in and WebDataset shards out, on this machine
    (no wandb, its multiprocessing distributor)."""
    return ["--url_list", str(url_file), "--input_format", "txt", "--output_folder", str(out),
            "--output_format", "webdataset", "--processes_count", str(processes),
            "--thread_count", str(threads), "--number_sample_per_shard", str(shard_size),
            "--enable_wandb", "False", "--distributor", "multiprocessing"]  # fmt: skip


def run_img2dataset(
    exe: Path, url_file: Path, out: Path, workers: int, threads: int, shard_size: int
) -> dict:
    flags = img2dataset_flags(url_file, out, workers, threads, shard_size)
    cmd = [str(exe), *flags, *IMG2DATASET_RESIZE, "--retries", "0"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    stats = [json.loads(Path(p).read_text()) for p in glob.glob(str(out / "*_stats.json"))]
    ok = sum(s["successes"] for s in stats)
    total = sum(s["count"] for s in stats)
    return {
        "images_per_s": round(ok / wall, 1),
        "success_rate": round(ok / max(total, 1), 4),
        "wall_s": round(wall, 2),
        "threads_per_process": threads,
    }


def _bracket(before: dict, after: dict) -> dict:
    """The pixel limit measured just before and just after a crawl, as one baseline: the
    host drifts by 20-30% within minutes, and a crawl's own period lies between the two."""
    mean = round((before["images_per_s"] + after["images_per_s"]) / 2, 1)
    return {"images_per_s": mean, "before": before, "after": after}


def _median_run(runs: list[dict], key: str) -> dict:
    """The run whose ``key`` is the median (the runs themselves are kept beside it)."""
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def _paired_ratios(runs: list[dict], key: str, baselines: list[dict], base_key: str) -> dict:
    """Each repeat's ratio to the baseline measured beside it, and their median: the host's
    speed drifts by 20-30% within minutes, and a pair shares the drift."""
    ratios = [round(r[key] / b[base_key], 3) for r, b in zip(runs, baselines, strict=True)]
    return {"median": sorted(ratios)[len(ratios) // 2], "per_repeat": ratios}


def _settle(stale_output: Path | None = None) -> None:
    """Remove a previous run's output and flush every pending write, so that no run pays for
    the disk writes of the one before it (the kernel writes back dirty pages later)."""
    if stale_output is not None:
        shutil.rmtree(stale_output, ignore_errors=True)
    os.sync()


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs; medians reported")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-bench-crawl"))
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--shard-size", type=int, default=1250, help="URLs per shard, both tools")
    p.add_argument("--img2dataset-threads", type=int, default=64)
    p.add_argument("--ours-set", nargs="*", default=["fetch.per_host_concurrency=64"],
                   metavar="KEY=VALUE",
                   help="config overrides for our crawler; every URL here is on one host, and "
                        "img2dataset has no per-host limit at all")  # fmt: skip
    p.add_argument("--skip-img2dataset", action="store_true")
    p.add_argument(
        "--server",
        choices=("nginx", "aiohttp"),
        default="nginx",
        help="the loopback web server; aiohttp is ours (pipelines.demo.loopback_web)",
    )
    args = parse_with_quick(p, {"n": 64, "repeats": 1, "workers": 2, "shard_size": 32,
                                "skip_img2dataset": True, "server": "aiohttp"})  # fmt: skip
    if args.server == "nginx" and not shutil.which("nginx"):
        apt_install(["nginx-light"], "nginx", otherwise=", or pass --server aiohttp")
    images = args.workdir / f"images-{args.n}"
    names = generate_images(images, args.n, args.workers)
    exe = None if args.skip_img2dataset else ensure_img2dataset(args.workdir / "venv-img2dataset")
    extra = [a for kv in args.ours_set for a in ("--set", kv)]
    runs: dict[str, list[dict]] = {"pixel_limit": [], "ours": [], "img2dataset": []}
    serve = serve_with_nginx if args.server == "nginx" else serve_in_process
    with serve(images) as port:
        url_file = args.workdir / "urls.txt"
        url_file.write_text("".join(f"http://127.0.0.1:{port}/{n}\n" for n in names))
        for _ in range(args.repeats):
            _settle()
            before = pixel_limit(images, names, args.workers)
            out = args.workdir / "out-ours"
            _settle(out)
            runs["ours"].append(run_ours(url_file, out, args.workers, args.shard_size, extra))
            _settle()
            runs["pixel_limit"].append(_bracket(before, pixel_limit(images, names, args.workers)))
            if exe is not None:
                out = args.workdir / "out-img2dataset"
                _settle(out)
                runs["img2dataset"].append(
                    run_img2dataset(exe, url_file, out, args.workers,
                                    args.img2dataset_threads, args.shard_size)
                )  # fmt: skip
    limit = _median_run(runs["pixel_limit"], "images_per_s")
    ours = _median_run(runs["ours"], "images_per_s")
    result: dict = {
        "n": args.n, "cores": args.workers, "max_side": MAX_SIDE, "shard_size": args.shard_size,
        "repeats": args.repeats, "server": args.server, "ours_overrides": args.ours_set,
        "pixel_limit": limit, "ours": ours,
        "ratio_ours_to_pixel_limit": _paired_ratios(
            runs["ours"], "images_per_s", runs["pixel_limit"], "images_per_s"),
    }  # fmt: skip
    if runs["img2dataset"]:  # both by wall clock, start-up included
        result["img2dataset"] = _median_run(runs["img2dataset"], "images_per_s")
        result["ratio_ours_to_img2dataset"] = _paired_ratios(
            runs["ours"], "images_per_s_wall", runs["img2dataset"], "images_per_s"
        )
    result["runs"] = runs
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
