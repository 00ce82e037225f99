"""CLI: ``python -m pipelines.retrieve --config CONFIG --out DIR [--set key=value ...]``.

Builds the LVD manifest (``DIR/lvd/NNNNN.parquet``, schema ``lvd/1``) from the kept pool
images and the seed sets named in the config (see ``configs/retrieve/example.yaml`` and
:class:`curation.lvd_manifest.RetrievalConfig`), and ``DIR/retrieval_stats.json`` with
one line per seed set: method, seed images, retrieved before and after the cap.
"""

from __future__ import annotations

import argparse
import json
import sys

from curation.lvd_manifest import RetrievalConfig, write_lvd_manifest
from manifests.config import add_config_arguments, config_from_arguments, describe
from pipelines.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.retrieve", description=describe(__doc__))
    add_config_arguments(p, "a RetrievalConfig YAML file", required=True)
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="where the LVD manifest (DIR/lvd) and retrieval_stats.json go",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def retrieve() -> str:
        stats = write_lvd_manifest(config_from_arguments(RetrievalConfig, args), args.out)
        return json.dumps(stats)

    return run_cli(retrieve)


if __name__ == "__main__":
    sys.exit(main())
