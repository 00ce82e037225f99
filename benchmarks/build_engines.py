"""Wall time of build_lvd per stage on each engine, on the demo web. Prints JSON.

The same recipe and web for every engine; the local engine is the baseline, and each
other engine's stage times are also given as a ratio to it (Ray and Beam pay for task
scheduling and, here, for sharing one machine with the driver). Beam runs only the
stages it implements (crawl, hash).

    python benchmarks/build_engines.py [--photos 400] [--engines local,ray,beam]

The pipeline is imported inside main(), as build_lvd does: the local crawl's worker
processes run this script's top level again, and would otherwise import torch each.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from manifests.config import describe, parse_with_quick


def main() -> None:
    from pipelines.build import run_build  # noqa: PLC0415 - see the module doc
    from pipelines.demo.run import demo_web  # noqa: PLC0415
    from pipelines.engines import make_engine  # noqa: PLC0415

    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--photos", type=int, default=400)
    p.add_argument("--engines", default="local,ray,beam")
    args = parse_with_quick(p, {"photos": 16, "engines": "local"})
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
