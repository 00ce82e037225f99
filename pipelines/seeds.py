"""CLI: ``python -m pipelines.seeds --seed-sets imagenet22k,gldv2 --seed-root
imagenet22k=/data/in22k --seed-root gldv2=/data/gldv2 --out DIR [--config seeds.yaml]``.

Writes one image manifest per seed set (``DIR/<name>.parquet``: id, path or tar + key,
label) for ``pipelines.embed``. Adapters: imagefolder, imagenet22k, imagenet1k,
imagenet1k_val, gldv2, manifest (see :mod:`curation.seeds.adapters`).
"""

from __future__ import annotations

import argparse
import json
import sys

from curation.seeds.registry import SeedSetsConfig, write_seed_manifest
from manifests.config import ConfigError, add_config_arguments, config_from_arguments, describe
from pipelines.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.seeds", description=describe(__doc__))
    p.add_argument("--seed-sets", required=True, help="comma-separated names")
    p.add_argument(
        "--seed-root",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="where a seed set's images are (repeatable)",
    )
    add_config_arguments(p, "roots: {name: path}, adapters: {name: adapter}")
    p.add_argument("--out", required=True, metavar="DIR", help="where the seed-set manifests go")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def seeds() -> str:
        config = config_from_arguments(SeedSetsConfig, args)
        for item in args.seed_root:
            name, sep, root = item.partition("=")
            if not sep:
                raise ConfigError(f"--seed-root {item!r}: expected NAME=PATH")
            config.roots[name] = root
        written = {}
        for name in filter(None, args.seed_sets.split(",")):
            path, count = write_seed_manifest(name, config, args.out)
            written[name] = {"manifest": str(path), "images": count}
        return json.dumps(written)

    return run_cli(seeds)


if __name__ == "__main__":
    sys.exit(main())
