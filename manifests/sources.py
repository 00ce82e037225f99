"""Digests of what a job reads from outside the build (URL lists, seed folders, block
lists), so that a rerun notices an input that changed under the same name.

A file's digest is the SHA-256 of its bytes; a folder's or a list of files' digest covers
each file's relative name, size and modification time (reading every image of a seed set
again on each rerun would cost as much as embedding it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
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


def inputs_digests(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The digest of each input a job names, in order: files by content, folders by listing."""
    return [listing_digest(Path(p).rglob("*"), p) if Path(p).is_dir() else file_digest(p)
            for p in paths]  # fmt: skip


def listing_digest(files: Iterable[str | os.PathLike], root: str | os.PathLike) -> str:
    """Digest of the names (relative to ``root``), sizes and modification times of ``files``:
    a file added, removed, replaced or rewritten changes it."""
    entries = []
    for f in files:
        stat = os.stat(f)
        if not os.path.isdir(f):
            entries.append((os.path.relpath(f, root), stat.st_size, stat.st_mtime_ns))
    text = json.dumps(sorted(entries))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
