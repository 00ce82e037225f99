"""The local engine: every stage runs on this machine, its shard tasks on a process pool
(:func:`curation.local_runner.run_locally`), its global steps in this process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from curation.local_runner import run_locally
from curation.tasks import ShardRunner


class LocalEngine:
    name = "local"

    def runner(self, stage: str) -> ShardRunner:
        return run_locally

    def call(self, fn: Callable[..., Any], *args: Any, gpus: float = 0.0) -> Any:
        return fn(*args)

    def close(self) -> None:
        pass
