"""What checking a finished stage costs on a rerun: sizes only (the default) against
CRC-32 checksums (``--verify``), beside a plain read of the same bytes, in the same run.

Writes ``--mb`` megabytes of incompressible shards (``--files`` of them) under
``--workdir``, then times, on a warm page cache (what a rerun right after a build sees;
a cold read is bounded by the disk instead): the size check, the CRC-32 check
(:func:`manifests.inventory.find_damage`), a plain read, and SHA-256 as the alternative
checksum. Prints one JSON object; the ratios are what to compare across machines.

    python benchmarks/inventory_checksums.py [--mb 1024] [--files 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from manifests.config import describe, parse_with_quick
from manifests.inventory import CHUNK, find_damage, take_inventory


def _write_shards(root: Path, mb: int, files: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    size = mb * (1 << 20) // files
    for i in range(files):
        (root / f"{i:05d}.tar").write_bytes(os.urandom(size))


def _read_all(root: Path, digest=None) -> None:
    for path in sorted(root.iterdir()):
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                if digest is not None:
                    digest.update(chunk)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--mb", type=int, default=1024)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lvd-bench-inventory"))
    args = parse_with_quick(p, {"mb": 8, "files": 4, "repeats": 1})
    root = args.workdir / "stage"
    shutil.rmtree(args.workdir, ignore_errors=True)
    _write_shards(root, args.mb, args.files)
    recorded = take_inventory(root)
    _read_all(root)  # warm the page cache
    seconds = {
        "sizes": _best(lambda: find_damage(root, recorded, checksums=False), args.repeats),
        "crc32": _best(lambda: find_damage(root, recorded, checksums=True), args.repeats),
        "read_only": _best(lambda: _read_all(root), args.repeats),
        "sha256": _best(lambda: _read_all(root, hashlib.sha256()), args.repeats),
    }
    assert not find_damage(root, recorded, checksums=True)
    mb = args.mb
    print(json.dumps({
        "mb": mb, "files": args.files, "cache": "warm",
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "mb_per_s": {k: round(mb / v, 1) for k, v in seconds.items() if k != "sizes"},
        "crc32_to_read_only": round(seconds["crc32"] / seconds["read_only"], 2),
        "sha256_to_crc32": round(seconds["sha256"] / seconds["crc32"], 2),
        "sizes_ms_per_file": round(1000 * seconds["sizes"] / args.files, 3),
    }, indent=1))  # fmt: skip
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
