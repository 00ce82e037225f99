"""How a stage hands its shards to an execution engine without knowing which one.

A stage that can run on several machines splits its work into shard tasks: a module-level
function and, per shard, a tuple of picklable arguments. The function commits its shard to
disk itself (atomically), so a runner returns nothing and a killed run resumes from the
committed shards. ``pipelines.engines`` provides runners for Ray and Beam; without one,
a stage runs its shards on this machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class ShardRunner(Protocol):
    def __call__(
        self, fn: Callable[..., Any], tasks: list[tuple], *, desc: str, gpus: float = 0.0
    ) -> None:
        """Run ``fn(*task)`` for every task (in any order, anywhere); raise if one fails.
        ``gpus`` is what one task needs where GPUs exist."""
