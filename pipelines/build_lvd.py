"""CLI: ``python -m pipelines.build_lvd --config CONFIG [--seed-sets imagenet22k,gldv2]
[--urls PATH...] [--out DIR] [--engine local|ray|beam] [--stages ...]``, or ``--demo``.

Runs the whole curation DAG into ``DIR`` (:mod:`pipelines.build`): crawl -> hash and
near-exact dedup -> embed pool -> copy and relative dedup -> embed seeds -> retrieve ->
report. The LVD manifest is ``DIR/retrieve/lvd`` (``python -m training.train --manifest
DIR/retrieve/lvd``), the report ``DIR/report.html``; a killed build resumes when rerun.

This module imports the pipeline only when run: worker processes that multiprocessing
starts from a forkserver (the local crawl's) import the command's module again, as
``__mp_main__``, and the pipeline imports torch: about 4 CPU-seconds per crawl worker here.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from pipelines.build import main as build_main  # noqa: PLC0415 - see the module doc

    return build_main(argv)


if __name__ == "__main__":
    sys.exit(main())
