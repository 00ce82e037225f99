"""The local engine's runner: every task exactly once, here (one process) or on forkserver
workers; a task's own error ends the run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from curation.local_runner import run_locally
from curation.tasks import ShardTasks
from manifests.errors import ManifestError


def record_task(index: int, out: str, seconds: float, on_items=None) -> None:
    time.sleep(seconds)
    Path(out, f"{index}.json").write_text(json.dumps({"pid": os.getpid()}))
    if on_items is not None:
        on_items(3, 2)


def failing_task(index: int, on_items=None) -> None:
    if index == 3:
        raise ManifestError(f"task {index}: a bad shard")


def test_every_task_runs_once_on_the_workers(tmp_path):
    tasks = [(i, str(tmp_path), 0.4) for i in range(8)]
    run_locally(ShardTasks(record_task, tasks, "test", items=24, processes=2), progress=False)
    done = {int(p.stem): json.loads(p.read_text())["pid"] for p in tmp_path.glob("*.json")}
    assert sorted(done) == list(range(8))
    pids = set(done.values())
    assert os.getpid() not in pids and len(pids) == 2  # both workers took tasks


def test_one_process_runs_every_task_here(tmp_path):
    tasks = [(i, str(tmp_path), 0.0) for i in range(3)]
    run_locally(ShardTasks(record_task, tasks, "test", processes=1), progress=False)
    pids = {json.loads(p.read_text())["pid"] for p in tmp_path.glob("*.json")}
    assert pids == {os.getpid()}


@pytest.mark.parametrize("processes", [1, 2])
def test_a_failing_task_raises_its_own_error(processes):
    with pytest.raises(ManifestError, match="task 3: a bad shard"):
        tasks = [(i,) for i in range(6)]
        run_locally(ShardTasks(failing_task, tasks, "test", processes=processes), progress=False)
