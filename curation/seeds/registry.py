"""Which adapter and root each seed set name resolves to: a config file's ``roots`` and
``adapters``, overridden by ``--seed-root NAME=PATH``; a name that is an adapter (e.g.
``imagenet22k``, ``gldv2``) needs no adapter entry."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from curation.seeds.adapters import ADAPTERS, Adapter
from manifests.config import ConfigError
from manifests.parquet_io import write_image_manifest


@dataclass
class SeedSetsConfig:
    roots: dict[str, str] = field(default_factory=dict)  # seed set name -> root
    adapters: dict[str, str] = field(default_factory=dict)  # seed set name -> adapter


def resolve(name: str, config: SeedSetsConfig) -> tuple[Adapter, str]:
    adapter_name = config.adapters.get(name, name)
    if adapter_name not in ADAPTERS:
        raise ConfigError(f"seed set {name}: no adapter {adapter_name!r}; set adapters.{name} "
                          f"to one of {sorted(ADAPTERS)}")  # fmt: skip
    if name not in config.roots:
        raise ConfigError(f"seed set {name}: no root; give --seed-root {name}=PATH "
                          f"({ADAPTERS[adapter_name].layout})")  # fmt: skip
    return ADAPTERS[adapter_name], config.roots[name]


def write_seed_manifest(name: str, config: SeedSetsConfig, out: str | Path) -> tuple[Path, int]:
    """``out/<name>.parquet``: id, path, tar, key, label for every image of the seed set."""
    adapter, root = resolve(name, config)
    rows = adapter.rows(name, root)
    return write_image_manifest(rows, Path(out) / f"{name}.parquet"), len(rows)


def seed_set_source(name: str, config: SeedSetsConfig) -> str:
    """What a seed set is read from: its adapter, root, and every image's id, label and
    file (name, size, modification time). Reading it checks the layout, so a seed folder
    of the wrong shape fails before the build starts, naming the layout expected."""
    adapter, root = resolve(name, config)
    files = {}
    rows = []
    for r in adapter.rows(name, root):
        file = r["path"] or r["tar"]
        if file not in files:
            try:
                stat = os.stat(file)
                files[file] = (stat.st_size, stat.st_mtime_ns)
            except OSError:  # embedding names it as a failed row
                files[file] = "missing"
        rows.append((r["id"], r["key"], r["label"], file))
    text = json.dumps([adapter.name, str(Path(root).resolve()), rows, sorted(files.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
