"""The local engine's :class:`~curation.tasks.ShardRunner`: shard tasks on this machine.

One process runs its tasks here, one after another; more run them on a plain process pool,
each worker taking the next task when it has finished one. Workers come from a forkserver
(a clean, single-threaded process that has imported the task's module once) rather than
from a fork of the caller, whose threads make fork unsafe; a command can start that server
early (:func:`start_worker_server`) so its imports run beside the command's own start-up.
The progress bar reads item counters the workers share.

Workers import this module, so it imports nothing heavy at the top (tqdm only when a bar
is drawn).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING, Any

from curation.tasks import ShardTasks

if TYPE_CHECKING:
    from tqdm import tqdm

PRELOAD = "curation.worker_preload"
DONE, OK, TASKS = range(3)  # the shared counters


def local_processes(configured: int) -> int:
    """Processes that run tasks at once on this machine (this one included): 0 is per core."""
    return configured or os.cpu_count() or 1


def worker_context(task_module: str) -> multiprocessing.context.ForkServerContext:
    """The forkserver context whose workers preload ``task_module`` (when it starts)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD, task_module])
    return ctx


def start_worker_server(processes: int, task_module: str) -> None:
    """Start the workers' forkserver now if ``processes`` (as configured) means workers;
    it keeps running for the rest of this process."""
    if local_processes(processes) > 1:
        worker_context(task_module)
        multiprocessing.forkserver.ensure_running()


class _Tally:
    """Items done and ok in one process, added to a sink in batches: a lock round trip per
    crawled URL costs more than the URL's bookkeeping."""

    FLUSH_EVERY = 64

    def __init__(self, sink: Callable[[int, int, int], None]) -> None:
        self.sink = sink  # (items done, items ok, tasks done)
        self.done = self.ok = self.tasks = 0

    def __call__(self, done: int, ok: int) -> None:
        self.done += done
        self.ok += ok
        if self.done >= self.FLUSH_EVERY:
            self.flush()

    def task_done(self) -> None:
        self.tasks += 1
        self.flush()

    def flush(self) -> None:
        if self.done or self.tasks:
            self.sink(self.done, self.ok, self.tasks)
            self.done = self.ok = self.tasks = 0


def _add_to(counters) -> Callable[[int, int, int], None]:
    def add(done: int, ok: int, tasks: int) -> None:
        with counters.get_lock():
            counters[DONE] += done
            counters[OK] += ok
            counters[TASKS] += tasks

    return add


def _run_counted(fn: Callable[..., Any], task: tuple, tally: _Tally) -> None:
    """``fn(*task)``, its items counted into ``tally`` (flushed even if it fails)."""
    try:
        fn(*task, on_items=tally)
    finally:
        tally.task_done()


_worker_tally: _Tally | None = None  # one per worker process


def _init_worker(counters) -> None:
    global _worker_tally
    _worker_tally = _Tally(_add_to(counters))


def _run_in_worker(fn: Callable[..., Any], task: tuple) -> None:
    _run_counted(fn, task, _worker_tally)


def run_locally(work: ShardTasks, progress: bool = True) -> None:
    """Run ``fn(*task, on_items=...)`` for every task, here (one process) or on ``processes``
    workers; raise the first failure. ``gpus`` is not used: a task sees this machine's
    devices."""
    if not work.tasks:
        return
    from tqdm import tqdm

    processes = min(local_processes(work.processes), len(work.tasks))
    by_items = work.items is not None
    with tqdm(total=work.items if by_items else len(work.tasks),
              unit=work.unit if by_items else "shard", desc=work.desc, disable=not progress,
              smoothing=0.1) as bar:  # fmt: skip
        if processes == 1:
            counts = [0, 0, 0]

            def add(done: int, ok: int, tasks_done: int) -> None:
                counts[DONE] += done
                counts[OK] += ok
                counts[TASKS] += tasks_done
                _show(bar, counts, by_items)

            tally = _Tally(add)
            for task in work.tasks:
                _run_counted(work.fn, task, tally)
        else:
            _run_in_processes(work.fn, work.tasks, processes, bar, by_items)


def _run_in_processes(
    fn: Callable[..., Any], tasks: list[tuple], processes: int, bar: tqdm, by_items: bool
) -> None:
    """Every task on a pool of ``processes`` workers; the bar follows their shared counters
    while this process waits."""
    ctx = worker_context(fn.__module__)
    counters = ctx.Array("q", 3)
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_init_worker,
                             initargs=(counters,)) as pool:  # fmt: skip
        running = {pool.submit(_run_in_worker, fn, task) for task in tasks}
        try:
            while running:
                done, running = wait_futures(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # a task's failure ends the run, with its own error
                _show(bar, counters, by_items)
        finally:
            for future in running:
                future.cancel()


def _show(bar: tqdm, counters, by_items: bool) -> None:
    done, ok, tasks = counters[DONE], counters[OK], counters[TASKS]
    bar.update((done if by_items else tasks) - bar.n)
    if done:
        elapsed = bar.format_dict["elapsed"] or 1e-9
        bar.set_postfix(ok_per_s=f"{ok / elapsed:.0f}", ok=f"{100 * ok / done:.1f}%")
