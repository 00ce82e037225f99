"""Atomic file commits: write under a temporary name, fsync, then rename.

A killed process leaves at most a ``.tmp-*`` file behind, never a half-written file
under the final name; stages treat the final name as the commit marker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"


def temporary_path(path: str | os.PathLike) -> Path:
    """The name a writer of ``path`` uses until it commits (its directory is created)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")


def commit(tmp: Path, path: str | os.PathLike) -> None:
    """Make ``tmp`` durable and rename it to ``path`` in one step."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    tmp = temporary_path(path)
    try:
        yield tmp
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_temporaries(directory: str | os.PathLike) -> int:
    """Delete leftovers of killed writers in ``directory``; returns how many were removed."""
    d = Path(directory)
    if not d.is_dir():
        return 0
    removed = 0
    for p in d.iterdir():
        if TMP_MARK in p.name:
            p.unlink(missing_ok=True)
            removed += 1
    return removed
