"""A stage's output directory remembers which job wrote it, so a rerun resumes only the
same job and a different one fails loudly instead of mixing outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from manifests.atomic import write_bytes_atomic
from manifests.errors import ManifestError


def claim_directory(
    root: str | os.PathLike, job: dict[str, Any], has_output: bool, name: str
) -> None:
    """Record ``job`` in ``root/name``; raise ManifestError if ``root`` already holds output
    of a job that differs (the message lists the differing keys)."""
    path = Path(root) / name
    found = json.loads(path.read_text()) if path.exists() else None
    if found is not None and has_output and found != job:
        changed = sorted(k for k in set(job) | set(found) if found.get(k) != job.get(k))
        raise ManifestError(
            f"{root}: holds output of another job (differs in {changed}, see {path}); "
            "use a new output directory"
        )
    write_bytes_atomic(path, json.dumps(job, indent=1).encode())
