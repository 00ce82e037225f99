"""CLI: ``python -m pipelines.dedup --manifest PATH... --out DIR [--embeddings DIR]
[--eval-embeddings DIR...]``.

Hashes the pool (sha256, pHash, PCA hash; resumable per shard), groups near-exact copies
by Hamming radius, links copies through the descriptor kNN graph when ``--embeddings``
(from ``pipelines.embed``) is given, drops components that touch an evaluation set's
embeddings, and writes ``DIR/dedup/NNNNN.parquet`` and ``DIR/dedup_stats.json``. Options
not given as flags are set with ``--config FILE.yaml`` or ``--set key=value`` (keys of
:class:`curation.dedup.stage.DedupConfig`, e.g. ``copy.threshold=0.6``).
"""

from __future__ import annotations

import argparse
import json
import sys

from curation.dedup.stage import DedupConfig, hash_and_dedup
from manifests.config import ConfigError, add_config_arguments, config_from_arguments, describe
from pipelines.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.dedup", description=describe(__doc__))
    p.add_argument("--manifest", nargs="+", required=True, metavar="PATH", help="pool manifest(s)")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="where hashes, the dedup manifest and its stats go",
    )
    p.add_argument("--embeddings", metavar="DIR", help="pool descriptors (pipelines.embed)")
    p.add_argument("--eval-embeddings", nargs="*", default=[], metavar="DIR",
                   help="descriptors of evaluation sets, same model as --embeddings")  # fmt: skip
    add_config_arguments(p, "a DedupConfig YAML file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def dedup() -> str:
        if args.eval_embeddings and not args.embeddings:
            raise ConfigError("--eval-embeddings needs --embeddings (the pool's descriptors)")
        config = config_from_arguments(DedupConfig, args)
        stats = hash_and_dedup(args.manifest, args.out, args.embeddings, args.eval_embeddings,
                               config, progress=not args.no_progress)  # fmt: skip
        return json.dumps({"out": args.out, "funnel": stats["funnel"], "reasons": stats["reasons"]})

    return run_cli(dedup)


if __name__ == "__main__":
    sys.exit(main())
