"""A run's metrics as it trains: JSON lines in ``metrics.jsonl`` (what the run report, the
benchmarks and a resumed run read) and TensorBoard event files beside it (rank 0), so
``tensorboard --logdir RUN`` shows the curves live."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType

from torch.utils.tensorboard import SummaryWriter

SCHEDULES = ("lr", "weight_decay", "momentum", "teacher_temp", "gram_weight")


def tag(key: str) -> str:
    """TensorBoard's name for a metric: loss terms, schedules and the rest apart."""
    if key.endswith("loss"):
        return f"loss/{key}"
    return f"schedule/{key}" if key in SCHEDULES else f"train/{key}"


class MetricsLog:
    def __init__(self, out: Path, rank: int) -> None:
        name = f"metrics.rank{rank}.jsonl" if rank else "metrics.jsonl"
        self._lines = open(out / name, "a")  # noqa: SIM115 - closed by __exit__
        self._events = SummaryWriter(str(out)) if rank == 0 else None

    def write(self, metrics: dict) -> None:
        self._lines.write(json.dumps(metrics) + "\n")
        self._lines.flush()
        if self._events is not None:
            for key, value in metrics.items():
                if key != "iteration":
                    self._events.add_scalar(tag(key), value, metrics["iteration"])
            self._events.flush()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None):
        self._lines.close()
        if self._events is not None:
            self._events.close()
