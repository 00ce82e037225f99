"""What a finished stage committed: every file's size and checksum, so that a rerun can
check what it would skip instead of trusting it.

A shard is every file of a stage directory whose name starts with the same ``NNNNN``
index, in whatever folder (a crawl shard's tar, stats and pool rows; an embedding
shard's ids and vectors): when one of them is damaged, the whole shard is redone.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from manifests.atomic import TMP_MARK

CHUNK = 8 << 20
_SHARD_STEM = re.compile(r"^(\d{5,})\.")

Inventory = dict[str, dict[str, int]]  # relative path -> {"bytes", "crc32"}


def crc32(path: Path) -> int:
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            value = zlib.crc32(chunk, value)
    return value


def take_inventory(root: Path, skip: tuple[str, ...] = ()) -> Inventory:
    """Size and CRC-32 of every committed file under ``root`` (not ``skip``, not temporaries)."""
    files = {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
             if p.is_file() and TMP_MARK not in p.name}  # fmt: skip
    return {name: {"bytes": p.stat().st_size, "crc32": crc32(p)}
            for name, p in files.items() if name not in skip}  # fmt: skip


def find_damage(root: Path, recorded: Inventory, checksums: bool) -> list[str]:
    """Recorded files that are missing, of another size, or (with ``checksums``) of other
    content; relative paths, sorted."""
    damaged = []
    for name, expected in sorted(recorded.items()):
        path = root / name
        if (
            not path.is_file()
            or path.stat().st_size != expected["bytes"]
            or checksums
            and crc32(path) != expected["crc32"]
        ):
            damaged.append(name)
    return damaged


def remove_damaged_shards(root: Path, damaged: list[str], recorded: Inventory) -> list[str]:
    """Delete the damaged files and every other file of their shards (same ``NNNNN`` index),
    so that the stage's resume redoes those shards; returns what was removed."""
    stems = {stem for name in damaged if (stem := _shard_of(name))}
    doomed = set(damaged) | {n for n in recorded if _shard_of(n) in stems}
    for name in sorted(doomed):
        (root / name).unlink(missing_ok=True)
    return sorted(doomed)


def _shard_of(name: str) -> str | None:
    m = _SHARD_STEM.match(Path(name).name)
    return m.group(1) if m else None
