"""The local engine's :class:`~curation.tasks.ShardRunner`: shard tasks on this machine.

This process runs tasks from the start, its imports done, while ``processes - 1`` worker
processes start; each process takes the next task when it has finished one. Workers come
from a forkserver (a clean, single-threaded process that has imported the task's module
once) rather than from a fork of the caller, whose threads make fork unsafe; a command
can start that server early (:func:`start_worker_server`) so its imports run beside the
command's own start-up. The progress bar reads item counters the processes share.

Workers import this module, so it imports nothing heavy at the top (tqdm only when a bar
is drawn).
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor
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


class _TaskQueue:
    """Task indices, taken one at a time by this process and by the workers."""

    def __init__(self, indices: Iterable[int]) -> None:
        self._indices = iter(indices)
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            return next(self._indices, None)

    def close(self) -> None:
        """Hand out nothing more (after a failure)."""
        with self._lock:
            self._indices = iter(())


def run_locally(work: ShardTasks, progress: bool = True) -> None:
    """Run ``fn(*task, on_items=...)`` for every task, in this process and up to
    ``processes - 1`` workers; raise the first failure. ``gpus`` is not used: a task sees
    this machine's devices."""
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
    ctx = worker_context(fn.__module__)
    queue = _TaskQueue(range(len(tasks)))
    counters = ctx.Array("q", 3)
    here_done = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="local-workers") as feeder:
        show = functools.partial(_show, bar, counters, by_items)
        workers = feeder.submit(_feed_workers, fn, tasks, queue, processes - 1, ctx, counters,
                                show, here_done)  # fmt: skip
        try:
            tally = _Tally(_add_to(counters))
            while (index := queue.take()) is not None:
                _run_counted(fn, tasks[index], tally)
        except BaseException:
            queue.close()
            raise
        finally:
            here_done.set()
        workers.result()


def _feed_workers(
    fn: Callable[..., Any],
    tasks: list[tuple],
    queue: _TaskQueue,
    n: int,
    ctx,
    counters,
    show: Callable[[], None],
    here_done: threading.Event,
) -> None:
    """Keep ``n`` workers running the queue's tasks, and the bar current (``show``), until the queue
    is empty and this process is done with its own tasks."""
    pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                               initargs=(counters,))  # fmt: skip
    running: set = set()
    try:
        while running or not here_done.is_set():
            while len(running) < n and (index := queue.take()) is not None:
                running.add(pool.submit(_run_in_worker, fn, tasks[index]))
            if running:
                done, running = wait_futures(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # a task's failure ends the run, with its own error
            else:
                here_done.wait(0.5)
            show()
    except BaseException:
        queue.close()
        raise
    finally:
        show()
        pool.shutdown(cancel_futures=True)


def _show(bar: tqdm, counters, by_items: bool) -> None:
    done, ok, tasks = counters[DONE], counters[OK], counters[TASKS]
    bar.update((done if by_items else tasks) - bar.n)
    if done:
        elapsed = bar.format_dict["elapsed"] or 1e-9
        bar.set_postfix(ok_per_s=f"{ok / elapsed:.0f}", ok=f"{100 * ok / done:.1f}%")
