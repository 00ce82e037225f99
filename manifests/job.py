"""An output directory remembers which job wrote it, so a rerun resumes only the same job
and a different one fails loudly instead of mixing outputs. Every resumable command (the
crawl, the shard stages, embedding, training) claims its directory here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from manifests.atomic import write_bytes_atomic
from manifests.errors import ManifestError


class ResumeMismatchError(ManifestError):
    """The output directory holds output of another job: resuming would mix the two."""


def claim_directory(
    root: str | os.PathLike,
    name: str,
    job: dict[str, Any],
    has_output: bool,
    identity: Iterable[str] | None = None,
) -> None:
    """Record ``job`` in ``root/name``. If ``root`` already holds output of a job that
    differs in ``identity`` (top-level keys of the job; default: all of them), raise
    ResumeMismatchError naming each differing setting as ``key: old -> new``."""
    path = Path(root) / name
    found = read_claim(root, name)
    job = json.loads(json.dumps(job, default=str))  # as it reads back: tuples are lists
    if found is not None and has_output:
        keys = list(identity) if identity is not None else sorted(set(job) | set(found))
        changed = changes({k: found.get(k) for k in keys}, {k: job.get(k) for k in keys})
        if changed:
            details = "; ".join(f"{k}: {_short(old)} -> {_short(new)}" for k, old, new in changed)
            raise ResumeMismatchError(
                f"{root}: holds output of another job (differs in {[k for k, _, _ in changed]}"
                f": {details}; see {path}); to build from other inputs or settings, use a new "
                "output directory"
            )
    write_bytes_atomic(path, json.dumps(job, indent=1).encode())


def read_claim(root: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The job recorded in ``root/name`` by :func:`claim_directory`, if any."""
    path = Path(root) / name
    return json.loads(path.read_text()) if path.exists() else None


def relative_paths(paths: list[str | os.PathLike], root: str | os.PathLike) -> list[str]:
    """``paths`` as a claim records them: relative to the claimed directory, so that a build
    moved as a whole is still the same job."""
    return [os.path.relpath(os.path.abspath(p), os.path.abspath(root)) for p in paths]


def changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(set(old) | set(new))
                for change in changes(old.get(key), new.get(key), f"{prefix}{key}.")]  # fmt: skip
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def job_directory(root: str | os.PathLike, name: str, job: dict[str, Any]) -> Path:
    """``root/name-<digest of job>``: where a stage keeps the intermediate results of one
    job (a search, a clustering), so that a rerun with the same settings resumes them and
    one with other settings starts afresh beside them; the other jobs' ``name-*``
    directories are removed, as their results answer settings no longer asked for."""
    text = json.dumps(job, sort_keys=True, default=str)
    path = Path(root) / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if Path(root).is_dir():
        for other in Path(root).glob(f"{name}-*"):
            if other != path and other.is_dir():
                shutil.rmtree(other)
    return path


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
