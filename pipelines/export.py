"""CLI: ``python -m pipelines.export --manifest BUILD/retrieve/lvd --format webdataset|hf
--out DIR [--shard-size N]``.

The curated images (the files the manifest points at: as the safety stage left them) with
their provenance, as WebDataset tar shards (``webdataset.WebDataset("DIR/{00000..N}.tar")``)
or a Hugging Face dataset (``datasets.load_dataset("DIR", split="train")``). A rerun
resumes, keeping the shards it verifies; ``DIR/export.json`` reconciles the counts with
the manifest (exported + failed = rows, each failure with its reason). See
:mod:`manifests.dataset_export`.
"""

from __future__ import annotations

import argparse
import json

from manifests.config import describe
from manifests.dataset_export import FORMATS, export_dataset
from pipelines.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.export", description=describe(__doc__))
    p.add_argument("--manifest", required=True, nargs="+", metavar="PATH",
                   help="manifest files or shard directories, e.g. BUILD/retrieve/lvd")  # fmt: skip
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="DIR", help="the dataset's directory")
    p.add_argument("--shard-size", type=int, default=5000, metavar="N",
                   help="images per shard (default 5000)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def export() -> str:
        summary = export_dataset(args.manifest, args.format, args.out, args.shard_size,
                                 progress=not args.no_progress)  # fmt: skip
        summary["failures"] = summary["failures"][:5]  # all of them are in DIR/export.json
        return json.dumps(summary)

    return run_cli(export)


if __name__ == "__main__":
    raise SystemExit(main())
