"""The local engine: every stage runs on this machine with its own parallelism (crawl
worker processes, DataLoader decoding workers, faiss threads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from curation.tasks import ShardRunner


class LocalEngine:
    name = "local"

    def runner(self, stage: str) -> ShardRunner | None:
        return None

    def call(self, fn: Callable[..., Any], *args: Any, gpus: float = 0.0) -> Any:
        return fn(*args)

    def close(self) -> None:
        pass
