"""CLI: ``python -m pipelines.embed --manifest PATH... --model SPEC --out DIR``.

Embeds every usable image of the manifests (pool shards, seed sets, evaluation sets) into
L2-normalized float16 shards aligned with ids (layout: :mod:`manifests.embeddings`;
model specs: :mod:`curation.embed`). Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys

from curation.embed import EmbedConfig, embed_manifests, load_embedder
from manifests.config import add_config_arguments, config_from_arguments, describe
from pipelines.cli import run_cli

# flag -> config key; each flag is a shorthand for --set KEY=VALUE
_FLAG_KEYS = {"rows_per_shard": "rows_per_shard", "batch_size": "batch_size",
              "workers": "num_workers", "device": "device"}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.embed", description=describe(__doc__))
    p.add_argument(
        "--manifest",
        nargs="+",
        required=True,
        metavar="PATH",
        help="image manifests: a crawl pool, a seed set, an evaluation set",
    )
    p.add_argument("--model", default="efficientnet_lite0", metavar="SPEC",
                   help="efficientnet_lite0 | vit:RUN_DIR | ARCH/PATCH:WEIGHTS.pth | "
                        "torchscript:PATH[@SIZE]")  # fmt: skip
    p.add_argument(
        "--out", required=True, metavar="DIR", help="the embedding store (a rerun resumes it)"
    )
    add_config_arguments(p, "an EmbedConfig YAML file", shorthands=_FLAG_KEYS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def embed() -> str:
        config = config_from_arguments(EmbedConfig, args)
        embedder = load_embedder(args.model)
        counts = embed_manifests(args.manifest, embedder, args.out, config, not args.no_progress)
        return json.dumps({"model": embedder.spec, "dim": embedder.dim, "out": args.out, **counts})

    return run_cli(embed)


if __name__ == "__main__":
    sys.exit(main())
