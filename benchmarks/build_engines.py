"""Wall time of build_lvd per stage on each engine, on the demo web. Prints JSON.

The same recipe and web for every engine; the local engine is the baseline, and each
other engine's stage times are also given as a ratio to it (Ray and Beam pay for task
scheduling and, here, for sharing one machine with the driver). Beam runs only the
stages it implements (crawl, hash).

    python benchmarks/build_engines.py [--photos 400] [--engines local,ray,beam]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from pipelines.build import run_build
from pipelines.demo import demo_web
from pipelines.engines import make_engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=int, default=400)
    p.add_argument("--engines", default="local,ray,beam")
    args = p.parse_args()
    figures: dict = {"photos": args.photos, "cpus": os.cpu_count(), "engines": {}}
    with tempfile.TemporaryDirectory() as tmp, demo_web(Path(tmp) / "in", args.photos) as config:
        config.crawl.shard_size = config.dedup.rows_per_shard = config.embed.rows_per_shard = 64
        for name in args.engines.split(","):
            engine = make_engine(name)
            stages = ["crawl", "hash"] if name == "beam" else None
            try:
                results = run_build(Path(tmp) / name, config, engine, stages, progress=False)
            finally:
                engine.close()
            figures["engines"][name] = {r.stage: r.seconds for r in results}
    base = figures["engines"].get("local", {})
    for name, seconds in figures["engines"].items():
        if name != "local" and base:
            figures[f"{name}_over_local"] = {
                s: round(t / base[s], 2) for s, t in seconds.items() if base.get(s)
            }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
