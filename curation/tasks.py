"""How a stage hands its shards to an execution engine without knowing which one.

A stage splits its work into shard tasks: a module-level function and, per shard, a tuple
of picklable arguments. The function commits its shard to disk itself (atomically), so a
runner returns nothing and a killed run resumes from the committed shards. Every engine
provides a runner: this machine's process pool (:func:`curation.local_runner.run_locally`,
the default), Ray tasks, or a Beam pipeline (``pipelines.engines``).

A task function takes an optional keyword ``on_items(done, ok)``, which it calls as the
items of its shard (URLs, images) finish; a runner that draws per-item progress passes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

ItemCounter = Callable[[int, int], None]  # on_items(done, ok)


@dataclass(frozen=True)
class ShardTasks:
    """A stage's shard tasks: ``fn(*task)`` for every task, in any order, anywhere."""

    fn: Callable[..., Any]
    tasks: list[tuple]
    desc: str  # what the tasks do, for progress and logs
    items: int | None = None  # how many items (URLs, images) the tasks hold, for progress
    unit: str = "item"
    gpus: float = 0.0  # what one task needs where GPUs exist
    # how many tasks one machine runs at once (0: one per core); an engine that schedules
    # by its own resources ignores it
    processes: int = 1


class ShardRunner(Protocol):
    def __call__(self, work: ShardTasks, progress: bool = True) -> None:
        """Run every task of ``work``; raise if one fails."""
