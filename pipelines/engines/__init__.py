"""Execution engines for ``pipelines.build_lvd``: where a stage's shard tasks run.

Stage code (``curation/``) is engine-free: it hands a :class:`curation.tasks.ShardRunner`
its shard tasks. An engine provides that runner (local: this machine's process pool);
the small global steps between a stage's task sets (union-find over edge shards, cluster
sampling) run in the driver, which never holds the pool's descriptors.
"""

from __future__ import annotations

from typing import Protocol

from curation.tasks import ShardRunner
from manifests.config import ConfigError

ENGINES = ("local", "ray", "beam")


class Engine(Protocol):
    name: str

    def runner(self, stage: str) -> ShardRunner:
        """The runner for ``stage``'s shard tasks."""

    def close(self) -> None: ...


def make_engine(name: str, options: list[str] | None = None, address: str | None = None) -> Engine:
    """``local`` (default), ``ray`` (``address``: a running cluster, ``auto`` or None for a
    local instance) or ``beam`` (``options``: Beam pipeline options, e.g. ``--runner``)."""
    if name == "local":
        from pipelines.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from pipelines.engines.ray_engine import RayEngine

        return RayEngine(address)
    if name == "beam":
        from pipelines.engines.beam_engine import BeamEngine

        return BeamEngine(options or [])
    raise ConfigError(f"unknown engine {name!r}; expected one of {ENGINES}")
