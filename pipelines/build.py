"""Running the curation DAG (:mod:`pipelines.lvd_stages`) into a build directory, and the
arguments of ``python -m pipelines.build_lvd`` (:mod:`pipelines.build_lvd`), which runs it.

Stages run in order into ``DIR/<stage>``: crawl -> hash and near-exact dedup -> embed pool
-> copy and relative dedup -> embed seeds -> retrieve -> report. A finished stage leaves
``DIR/<stage>/stage.json`` with a fingerprint of the recipe parts and inputs it was built
from; a rerun skips stages whose fingerprint still holds and resumes the others from their
committed shards, so killing a build anywhere and rerunning it gives the manifest an
uninterrupted build gives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.crawl.errors import InputError, ResumeMismatchError
from manifests.atomic import write_bytes_atomic
from manifests.config import ConfigError, load_config
from pipelines.cli import USER_ERRORS, run_cli
from pipelines.curation_config import CurationConfig
from pipelines.engines import ENGINES, Engine, make_engine
from pipelines.lvd_stages import STAGE_NAMES, STAGES, Build, Stage

log = logging.getLogger("build_lvd")

MARKER = "stage.json"


class MissingStageError(RuntimeError):
    """A stage's inputs are not there: the stage that makes them has not finished."""


@dataclass
class StageResult:
    stage: str
    status: str  # ran | skipped
    seconds: float
    summary: dict[str, Any]


def _marker(b: Build, stage: str) -> dict[str, Any] | None:
    path = b.dir(stage) / MARKER
    return json.loads(path.read_text()) if path.exists() else None


def _fingerprint(b: Build, stage: Stage) -> str:
    inputs = {need: (_marker(b, need) or {}).get("fingerprint") for need in stage.needs}
    text = json.dumps({"settings": stage.settings(b.config), "inputs": inputs}, sort_keys=True,
                      default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _require_inputs(b: Build, stage: Stage) -> None:
    for need in stage.needs:
        if _marker(b, need) is None:
            raise MissingStageError(
                f"stage {stage.name} needs the output of stage {need} ({b.dir(need)}), which "
                f"has not finished; run it first: --stages {need}"
            )


def run_build(
    out: str | Path,
    config: CurationConfig,
    engine: Engine,
    stages: list[str] | None = None,
    progress: bool = True,
) -> list[StageResult]:
    """Run ``stages`` (default: all) of the DAG in order into ``out``; see the module doc."""
    chosen = stages or list(STAGE_NAMES)
    unknown = [s for s in chosen if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"--stages {','.join(unknown)}: expected some of {STAGE_NAMES}")
    config.validate()
    b = Build(Path(out).resolve(), config, engine, progress)
    b.out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in STAGES if s.name in chosen]
    results = []
    for n, stage in enumerate(todo, 1):
        _require_inputs(b, stage)
        fingerprint = _fingerprint(b, stage)
        done = _marker(b, stage.name)
        if done is not None and done["fingerprint"] == fingerprint:
            log.info("[%d/%d] %s: done earlier, skipped", n, len(todo), stage.name)
            results.append(StageResult(stage.name, "skipped", 0.0, done["summary"]))
            continue
        log.info("[%d/%d] %s (engine %s)", n, len(todo), stage.name, engine.name)
        started = time.perf_counter()
        summary = stage.run(b)
        seconds = round(time.perf_counter() - started, 2)
        record = {"stage": stage.name, "fingerprint": fingerprint, "engine": engine.name,
                  "seconds": seconds, "summary": summary}  # fmt: skip
        b.dir(stage.name).mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(b.dir(stage.name) / MARKER, json.dumps(record, indent=1).encode())
        results.append(StageResult(stage.name, "ran", seconds, summary))
    return results


def format_results(out: Path, results: list[StageResult]) -> str:
    describe = {s.name: s.describe for s in STAGES}
    lines = [f"build_lvd -> {out}"]
    for r in results:
        line = describe[r.stage](r.summary)
        lines.append(f"  {r.stage:<12} {r.status:<8} {r.seconds:>7.1f}s  {line}")
    if (out / "retrieve" / "lvd").is_dir():
        lines.append(f"  LVD manifest: {out / 'retrieve' / 'lvd'}")
    if (out / "report.html").exists():
        lines.append(f"  report: {out / 'report.html'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.build_lvd",
        description="Build a curated LVD manifest from URL sources: the whole curation DAG, "
        "resumable.",
    )
    p.add_argument("--config", metavar="YAML", help="a curation recipe (configs/curation/)")
    p.add_argument("--demo", action="store_true",
                   help="build from a small web on loopback, train a few steps")  # fmt: skip
    p.add_argument("--seed-sets", help="comma-separated seed sets of the recipe to use")
    p.add_argument("--seed-root", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--urls", nargs="+", metavar="PATH", help="replace the recipe's urls")
    p.add_argument("--out", type=Path, metavar="DIR")
    p.add_argument("--engine", default="local", choices=ENGINES)
    p.add_argument("--ray-address", help="a running Ray cluster (auto under ray submit)")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGE_NAMES)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> CurationConfig:
    if not args.config:
        raise ConfigError("--config is required (see configs/curation/), or use --demo")
    config = load_config(CurationConfig, args.config, args.set)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.build_lvd``: build, and print where the results are."""
    args, beam_options = build_parser().parse_known_args(argv)

    def build() -> str:
        if beam_options and args.engine != "beam":
            raise ConfigError(f"unrecognized arguments: {' '.join(beam_options)}")
        if args.demo:
            from pipelines.demo import run_demo

            return run_demo(
                args.out or Path("out/demo"), args.engine, progress=not args.no_progress
            )
        config = config_from_args(args)
        out = args.out or Path("out/lvd")
        stages = args.stages.split(",") if args.stages else None
        engine = make_engine(args.engine, beam_options, args.ray_address)
        try:
            return format_results(out, run_build(out, config, engine, stages,
                                                 not args.no_progress))  # fmt: skip
        finally:
            engine.close()

    logging.getLogger("build_lvd").setLevel(logging.INFO)
    return run_cli(build, (*USER_ERRORS, MissingStageError, ResumeMismatchError, InputError))
