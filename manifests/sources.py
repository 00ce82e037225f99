"""Digests of the files a job reads from outside the build (URL lists, block lists), so
that a rerun notices an input that changed under the same name. (A seed set, whose images
would cost as much to read again as to embed, is digested by its files' names, sizes and
modification times: :func:`curation.seeds.registry.seed_set_source`.)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from manifests.inventory import CHUNK


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a missing file: ``missing``, so the job itself reports it)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()[:16]
