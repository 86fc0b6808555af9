"""Where grading units run: in this process, in a pool of local processes, or on a Dask cluster.

All three take the same calls (`submit`, `wait`) and answer `concurrent.futures.Future`s, so the batch has one
loop whatever runs it. A pool process that dies breaks a local pool: `restart` makes a new one. On Dask, a worker
that dies is replaced by the scheduler, which retries its task elsewhere and gives up with `KilledWorker`.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import signal
import sys
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

import psutil

KERNEL_MEMORY_BYTES = 3 * 2**30  # what one grading worker and its kernel may hold with the course model loaded


def cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> tuple[int, str]:
    """As many workers as the cores and the free memory allow, and a line saying why."""
    count, free = cores(), psutil.virtual_memory().available
    workers = max(1, min(count, free // KERNEL_MEMORY_BYTES))
    return workers, (f"{workers} worker(s): {count} core(s), {free / 2**30:.1f} GiB free, about "
                     f"{KERNEL_MEMORY_BYTES / 2**30:g} GiB per worker")


class InProcess:
    """Runs each unit at once, here: one after another (`--workers 1`)."""

    workers = 1
    remote = False

    def submit(self, fn: Callable, *args: Any) -> futures.Future:
        done: futures.Future = futures.Future()
        try:
            done.set_result(fn(*args))
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: BLE001  (the caller reads it off the future, as from a pool)
            done.set_exception(error)
        return done

    def restart(self) -> None:
        """Nothing to restart."""

    def close(self, cancel: bool = False) -> None:
        """Nothing to close."""


def _start_worker() -> None:
    """Set up a forked pool process: Ctrl-C is the main process's, and output goes to the process's own streams."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the batch from the main process, which cleans up
    # The grader forks its pool inside its progress display, which has replaced sys.stdout and sys.stderr with
    # proxies that take the display's lock. Its refresh thread may hold that lock at the fork; the child's copy then
    # stays locked for good, and the first warning a worker printed hung it (a class graded from a terminal waited
    # for 25 minutes on one notebook).
    sys.stdout, sys.stderr = sys.__stdout__ or sys.stdout, sys.__stderr__ or sys.stderr


class LocalPool:
    """A pool of `workers` processes on this machine.

    They are forked: a spawned process re-imports the caller's main script, which a script without a
    `__main__` guard cannot survive, and a worker runs no torch of its own (kernels and the capstone's evaluation
    are new processes), so nothing it inherits from the grader matters."""

    remote = False

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = self._start()

    def _start(self) -> futures.ProcessPoolExecutor:
        return futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                           initializer=_start_worker)

    def submit(self, fn: Callable, *args: Any) -> futures.Future:
        return self._pool.submit(fn, *args)

    def restart(self) -> None:
        """A new pool after one of its processes died (a broken pool answers every pending unit with an error)."""
        self.close(cancel=True)
        self._pool = self._start()

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


class DaskCluster:
    """The workers of a running Dask cluster, reached through its scheduler's address."""

    remote = True

    def __init__(self, address: str):
        try:
            from distributed import Client
        except ImportError as error:  # the `distributed` package is a dependency; a trimmed install may lack it
            raise RuntimeError("grading on Dask needs the `distributed` package: pip install distributed") from error
        try:
            self._client = Client(address, timeout="30s")
        except OSError as error:
            raise RuntimeError(f"no Dask scheduler answers at {address}: {error}") from error
        self._executor = self._client.get_executor(pure=False)  # every unit runs, even two with equal inputs
        self.workers = max(1, len(self._client.scheduler_info().get("workers", {})))

    def submit(self, fn: Callable, *args: Any) -> futures.Future:
        return self._executor.submit(fn, *args)

    def restart(self) -> None:
        """The scheduler replaces dead workers itself."""

    def close(self, cancel: bool = False) -> None:
        self._executor.shutdown(wait=not cancel)
        self._client.close()


def open_runner(workers: int = 1, dask: str | None = None):
    """The runner for `--workers N` or `--dask ADDRESS`."""
    if dask:
        return DaskCluster(dask)
    return InProcess() if workers <= 1 else LocalPool(workers)


def is_broken_pool(error: BaseException) -> bool:
    """Whether a unit's error says a local pool process died (not that the unit itself failed)."""
    return isinstance(error, BrokenProcessPool)
