"""CLI: ``python -m pipelines.safety --manifest PATH... --out DIR [--config FILE.yaml]
[--set KEY=VALUE]``.

The safety stage alone (:mod:`curation.safety.stage`): scores every usable image of the
manifests for NSFW content and finds its faces, drops images at or over the NSFW
threshold, and writes ``DIR/manifest/NNNNN.parquet`` (an image manifest: later stages read
the kept images from it, faces blurred), ``DIR/images/NNNNN.tar`` (the blurred copies) and
``DIR/safety_stats.json``. Rerunning the same command resumes. Keys of
:class:`curation.safety.stage.SafetyConfig`, e.g. ``--set nsfw_threshold=0.7``.
"""

from __future__ import annotations

import argparse
import json
import sys

from curation.safety.stage import SafetyConfig, check_pool
from manifests.config import add_config_arguments, config_from_arguments, describe
from pipelines.cli import run_cli

_FLAG_KEYS = {"rows_per_shard": "rows_per_shard", "batch_size": "batch_size",
              "device": "detector.device"}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.safety", description=describe(__doc__))
    p.add_argument("--manifest", nargs="+", required=True, metavar="PATH",
                   help="image manifest(s): a crawl's pool, or any manifest of images")  # fmt: skip
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the stage directory (manifest, blurred images, stats)",
    )
    add_config_arguments(p, "a SafetyConfig YAML file", shorthands=_FLAG_KEYS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def safety() -> str:
        config = config_from_arguments(SafetyConfig, args)
        stats = check_pool(args.manifest, args.out, config, progress=not args.no_progress)
        return json.dumps({"out": args.out, **stats})

    return run_cli(safety)


if __name__ == "__main__":
    sys.exit(main())
