"""Execution engines for ``pipelines.build_lvd``: where a stage's shard tasks run.

Stage code (``curation/``) is engine-free: it hands a :class:`curation.tasks.ShardRunner`
its shard tasks. An engine provides that runner (local: this machine's process pool) and
runs a stage's global step (dedup, retrieval), which needs all of a stage's shards at
once, where it should run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from curation.tasks import ShardRunner
from manifests.config import ConfigError

ENGINES = ("local", "ray", "beam")


class Engine(Protocol):
    name: str

    def runner(self, stage: str) -> ShardRunner:
        """The runner for ``stage``'s shard tasks."""

    def call(self, fn: Callable[..., Any], *args: Any, gpus: float = 0.0) -> Any:
        """``fn(*args)`` where it should run (a step that needs all shards at once)."""

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
