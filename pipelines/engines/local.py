"""The local engine: every stage runs on this machine, its shard tasks on a process pool
(:func:`curation.local_runner.run_locally`)."""

from __future__ import annotations

from curation.local_runner import run_locally
from curation.tasks import ShardRunner


class LocalEngine:
    name = "local"

    def runner(self, stage: str) -> ShardRunner:
        return run_locally

    def close(self) -> None:
        pass
