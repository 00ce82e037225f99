"""CLI: ``python -m pipelines.build_lvd --config CONFIG [--seed-sets imagenet22k,gldv2]
[--urls PATH...] [--out DIR] [--engine local|ray|beam] [--stages ...] [--set KEY=VALUE]``,
or ``--demo``.

Runs the whole curation DAG into ``DIR`` (:mod:`pipelines.build`): crawl -> hash and
near-exact dedup -> embed pool -> copy and relative dedup -> embed seeds -> retrieve ->
report. The LVD manifest is ``DIR/retrieve/lvd`` (``python -m training.train --manifest
DIR/retrieve/lvd``), the report ``DIR/report.html``; a killed build resumes when rerun.
``--demo`` builds from a small web on loopback instead (:mod:`pipelines.demo.run`).

This module imports the pipeline only when run: worker processes that multiprocessing
starts from a forkserver (the local crawl's) import the command's module again, as
``__mp_main__``, and the pipeline imports torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from manifests.config import ConfigError, add_config_arguments, config_from_arguments
from pipelines.cli import USER_ERRORS, add_network_arguments, network_overrides, run_cli
from pipelines.engines import ENGINES

DEFAULT_OUT, DEMO_OUT = Path("out/lvd"), Path("out/demo")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.build_lvd",
        description="Build a curated LVD manifest from URL sources: the whole curation DAG, "
        "resumable.",
    )
    add_config_arguments(p, "a curation recipe (configs/curation/)")
    p.add_argument("--demo", action="store_true",
                   help="build from a small web on loopback, train a few steps")  # fmt: skip
    p.add_argument("--seed-sets", help="comma-separated seed sets of the recipe to use")
    p.add_argument("--seed-root", action="append", default=[], metavar="NAME=PATH",
                   help="where a seed or evaluation set's images are (repeatable)")  # fmt: skip
    p.add_argument("--urls", nargs="+", metavar="PATH", help="replace the recipe's urls")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"the build directory (default {DEFAULT_OUT}; with --demo {DEMO_OUT})",
    )
    p.add_argument("--engine", default="local", choices=ENGINES,
                   help="where the shard tasks run: this machine, a Ray cluster, Apache Beam "
                   "(default local)")  # fmt: skip
    p.add_argument("--ray-address", help="a running Ray cluster (auto under ray submit)")
    p.add_argument("--stages", help="comma-separated subset of the stages (default: all)")
    p.add_argument("--verify", action="store_true",
                   help="check finished stages' checksums too, not only their sizes")  # fmt: skip
    add_network_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace):  # -> CurationConfig, imported when run
    from pipelines.curation_config import CurationConfig  # noqa: PLC0415 - see the module doc

    if not args.config:
        raise ConfigError("--config is required (see configs/curation/), or use --demo")
    config = config_from_arguments(CurationConfig, args, network_overrides(args, "crawl."))
    if args.urls:
        config.urls = args.urls
    for item in args.seed_root:
        name, sep, root = item.partition("=")
        if not sep:
            raise ConfigError(f"--seed-root {item!r}: expected NAME=PATH")
        config.seeds.roots[name] = root
    if args.seed_sets:
        config.select_seed_sets([s for s in args.seed_sets.split(",") if s])
    return config


def _demo(args: argparse.Namespace) -> str:
    from pipelines.demo.run import run_demo  # noqa: PLC0415 - see the module doc

    return run_demo(args.out or DEMO_OUT, args.engine, progress=not args.no_progress)


def _build(args: argparse.Namespace, beam_options: list[str]) -> str:
    from pipelines.build import format_results, run_build  # noqa: PLC0415 - see the module doc
    from pipelines.build_layout import BuildLayout  # noqa: PLC0415
    from pipelines.engines import make_engine  # noqa: PLC0415

    config = config_from_args(args)
    out = args.out or DEFAULT_OUT
    stages = args.stages.split(",") if args.stages else None
    engine = make_engine(args.engine, beam_options, args.ray_address)
    try:
        results = run_build(out, config, engine, stages, not args.no_progress, args.verify)
    finally:
        engine.close()
    return format_results(BuildLayout(out), results)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.build_lvd``: build (or the demo), and print where results are."""
    args, beam_options = build_parser().parse_known_args(argv)

    def build() -> str:
        if beam_options and args.engine != "beam":
            raise ConfigError(f"unrecognized arguments: {' '.join(beam_options)}")
        return _demo(args) if args.demo else _build(args, beam_options)

    from curation.crawl.errors import InputError  # noqa: PLC0415
    from pipelines.build import MissingStageError  # noqa: PLC0415 - see the module doc

    logging.getLogger("build_lvd").setLevel(logging.INFO)
    return run_cli(build, (*USER_ERRORS, MissingStageError, InputError))


if __name__ == "__main__":
    sys.exit(main())
