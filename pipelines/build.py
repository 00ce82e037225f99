"""Running the curation DAG (:mod:`pipelines.lvd_stages`) into a build directory; the
command is ``python -m pipelines.build_lvd`` (:mod:`pipelines.build_lvd`).

Stages run in order into ``DIR/<stage>``: crawl -> hash and near-exact dedup -> embed pool
-> copy and relative dedup -> embed seeds -> retrieve -> report. A finished stage leaves
``DIR/<stage>/stage.json`` with a fingerprint of the recipe parts and inputs it was built
from, and the size and checksum of every file it wrote; a rerun skips stages whose
fingerprint still holds once their files check out (sizes always, checksums with
``verify``), redoes the damaged or missing shards of those that do not, and resumes the
others from their committed shards, so killing a build anywhere and rerunning it gives the
manifest an uninterrupted build gives. A stage's inputs are the content of the stages it
needs: when a repaired stage's content changes, what depends on it is built afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manifests.atomic import write_bytes_atomic
from manifests.config import ConfigError
from manifests.inventory import find_damage, remove_damaged_shards, take_inventory
from pipelines.build_layout import BuildLayout
from pipelines.curation_config import CurationConfig
from pipelines.engines import Engine
from pipelines.lvd_stages import STAGE_NAMES, STAGES, Build, Sources, Stage
from pipelines.reconcile import check_counts

log = logging.getLogger("build_lvd")

MARKER = "stage.json"  # a finished stage: its fingerprint, inputs, summary and files
STARTED = "stage.started.json"  # the fingerprint and inputs of the stage's latest start


class MissingStageError(RuntimeError):
    """A stage's inputs are not there: the stage that makes them has not finished."""


@dataclass
class StageResult:
    stage: str
    status: str  # ran | skipped | repaired
    seconds: float
    summary: dict[str, Any]


def _marker(b: BuildLayout, stage: str, name: str = MARKER) -> dict[str, Any] | None:
    path = b.dir(stage) / name
    return json.loads(path.read_text()) if path.exists() else None


def _content_id(marker: dict[str, Any]) -> str:
    """What a finished stage holds: its fingerprint and every file's size and checksum."""
    text = json.dumps([marker["fingerprint"], marker.get("files")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _needed(b: Build, stage: Stage) -> dict[str, dict[str, Any]]:
    """The finished markers of the stages ``stage`` needs."""
    needed = {}
    for need in stage.needs:
        marker = _marker(b, need)
        if marker is None:
            raise MissingStageError(
                f"stage {stage.name} needs the output of stage {need} ({b.dir(need)}), which "
                f"has not finished; run it first: --stages {need}"
            )
        needed[need] = marker
    return needed


def _fingerprint(b: Build, stage: Stage, inputs: dict[str, str]) -> str:
    text = json.dumps({"settings": stage.settings(b.config, b.sources), "inputs": inputs},
                      sort_keys=True,
                      default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_marker(b: Build, stage: str, record: dict[str, Any], name: str = MARKER) -> None:
    b.dir(stage).mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(b.dir(stage) / name, json.dumps(record, indent=1).encode())


def _prepare(
    b: Build, stage: Stage, marker: dict[str, Any] | None, fingerprint: str,
    inputs: dict[str, str], verify: bool,
) -> str:  # fmt: skip
    """``skip`` a finished stage (``marker``) whose files are intact; otherwise make the
    directory ready to run it: ``repair`` (its damaged shards removed, the rest resumed), or
    ``run`` (afresh where its inputs changed since it last ran, else resuming)."""
    directory = b.dir(stage.name)
    if marker is not None and marker["fingerprint"] == fingerprint:
        damaged = find_damage(directory, marker.get("files", {}), checksums=verify)
        if not damaged:
            return "skip"
        removed = remove_damaged_shards(directory, damaged, marker["files"])
        log.warning("%s: %d damaged or missing file(s) %s; redoing %d file(s) of those shards, "
                    "and the stages that depend on them if their content changes",
                    stage.name, len(damaged), damaged[:10], len(removed))  # fmt: skip
        status = "repair"
    else:
        previous = marker or _marker(b, stage.name, STARTED)
        if previous is not None and stage.needs and previous.get("inputs") != inputs:
            log.info("%s: its inputs changed since it ran; starting it afresh", stage.name)
            shutil.rmtree(directory)
        status = "run"
    _write_marker(b, stage.name, {"fingerprint": fingerprint, "inputs": inputs}, STARTED)
    return status


def run_build(
    out: str | Path,
    config: CurationConfig,
    engine: Engine,
    stages: list[str] | None = None,
    progress: bool = True,
    verify: bool = False,
) -> list[StageResult]:
    """Run ``stages`` (default: all) of the DAG in order into ``out``; see the module doc.
    A finished stage is skipped once its files are checked: sizes always, checksums too
    with ``verify``."""
    chosen = stages or list(STAGE_NAMES)
    unknown = [s for s in chosen if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"--stages {','.join(unknown)}: expected some of {STAGE_NAMES}")
    config.validate()
    todo = [s for s in STAGES if s.name in chosen]
    Path(out).mkdir(parents=True, exist_ok=True)
    sources = Sources.read(config, [s.name for s in todo])
    b = Build(Path(out).resolve(), config, engine, sources, progress)
    results = []
    for n, stage in enumerate(todo, 1):
        needed = _needed(b, stage)
        inputs = {need: _content_id(marker) for need, marker in needed.items()}
        fingerprint = _fingerprint(b, stage, inputs)
        marker = _marker(b, stage.name)
        action = _prepare(b, stage, marker, fingerprint, inputs, verify)
        if action == "skip":
            log.info("[%d/%d] %s: done earlier, checked, skipped", n, len(todo), stage.name)
            results.append(StageResult(stage.name, "skipped", 0.0, marker["summary"]))
            continue
        log.info("[%d/%d] %s (engine %s)", n, len(todo), stage.name, engine.name)
        started = time.perf_counter()
        summary = stage.run(b)
        check_counts(stage.name, summary, {k: m["summary"] for k, m in needed.items()})
        seconds = round(time.perf_counter() - started, 2)
        _write_marker(b, stage.name, {
            "stage": stage.name, "fingerprint": fingerprint, "inputs": inputs,
            "engine": engine.name, "seconds": seconds, "summary": summary,
            "files": take_inventory(b.dir(stage.name), skip=(MARKER, STARTED)),
        })  # fmt: skip
        status = "repaired" if action == "repair" else "ran"
        results.append(StageResult(stage.name, status, seconds, summary))
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
