"""Running the curation DAG (:mod:`pipelines.lvd_stages`) into a build directory; the
command is ``python -m pipelines.build_lvd`` (:mod:`pipelines.build_lvd`).

Stages run in order into ``DIR/<stage>``: crawl -> hash and near-exact dedup -> embed pool
-> copy and relative dedup -> embed seeds -> retrieve -> report. A finished stage leaves
``DIR/<stage>/stage.json`` with a fingerprint of the recipe parts and inputs it was built
from; a rerun skips stages whose fingerprint still holds and resumes the others from their
committed shards, so killing a build anywhere and rerunning it gives the manifest an
uninterrupted build gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests.atomic import write_bytes_atomic
from manifests.config import ConfigError
from pipelines.build_layout import BuildLayout
from pipelines.curation_config import CurationConfig
from pipelines.engines import Engine
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


def _marker(b: BuildLayout, stage: str) -> dict[str, Any] | None:
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


def format_results(build: BuildLayout, results: list[StageResult]) -> str:
    describe = {s.name: s.describe for s in STAGES}
    lines = [f"build_lvd -> {build.out}"]
    for r in results:
        line = describe[r.stage](r.summary)
        lines.append(f"  {r.stage:<12} {r.status:<8} {r.seconds:>7.1f}s  {line}")
    if build.lvd_manifest.is_dir():
        lines.append(f"  LVD manifest: {build.lvd_manifest}")
    if build.report.exists():
        lines.append(f"  report: {build.report}")
    return "\n".join(lines)
