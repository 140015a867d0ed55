"""Ordered parallel map over volumes with a bounded number of results in flight: the one process
pool of the pipeline (`ordered_map` for one map, `OrderedPool` for several maps on one pool).

Pool workers die with the process that started them: a `kill -9` of a stage must not leave
workers (hundreds of MB each) running on. On Linux each worker asks the kernel for SIGKILL when
its parent dies (`prctl(PR_SET_PDEATHSIG)`); elsewhere a daemon thread in the worker watches the
parent's pid. (The kernel signals when the parent *thread* that forked the worker ends; the pool
forks from the thread calling `ordered_map`, so call it from a thread that outlives the map.)
"""
from __future__ import annotations

import ctypes
import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def worker_count(requested: int = 0) -> int:
    """`requested` workers, or one per available core when 0."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


PR_SET_PDEATHSIG = 1


M_MMAP_THRESHOLD = -3          # glibc mallopt parameter
LARGE_ALLOCATION = 4 << 20


def _init_worker(parent: int) -> None:
    """Pool initializer: end this worker with `parent`, and give its large buffers back when freed.

    glibc raises its mmap threshold to the largest block freed so far, so after the first job's
    shard-sized buffers later ones come from the heap, which keeps what it grew to: a worker's
    resident memory would creep up over its first dozen jobs. A fixed threshold keeps blocks of 4 MB
    and more in their own mappings, returned to the system when freed."""
    _die_with_parent(parent)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION)
        except (OSError, AttributeError):   # not glibc
            pass


def _die_with_parent(parent: int) -> None:
    """End this worker when process `parent` ends (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def forks() -> bool:
    """Whether `ordered_map`'s workers are forked (and so inherit this process's memory maps)."""
    return "fork" in mp.get_all_start_methods()


def process_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` processes, forked where the platform can (no `if __name__ == "__main__"` guard
    needed in callers, and the workers inherit this process's memory maps), each ending with this
    process (see the module doc)."""
    ctx = mp.get_context("fork") if forks() else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(os.getpid(),))


def ordered_map(func: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int | None = None,
                pool: ProcessPoolExecutor | None = None) -> Iterator[R]:
    """Yield func(item) in input order. `items` is consumed lazily and at most `in_flight`
    (default 2*workers) items are submitted ahead of the result the caller holds, so memory stays
    flat however many items there are: item k + in_flight is submitted once result k is taken, after
    the caller is done with result k - 1. One item (or workers <= 1) runs in this process. `pool`:
    a `process_pool` to run in, left open for the caller's next map; without one the map starts
    its own and ends it."""
    it = iter(items)
    head = list(itertools.islice(it, 2))
    if workers <= 1 or len(head) <= 1:
        for item in itertools.chain(head, it):
            yield func(item)
        return
    ahead = max(1, in_flight or 2 * workers)
    own = pool is None
    pool = process_pool(workers) if pool is None else pool
    try:
        it = itertools.chain(head, it)
        pending: deque = deque(pool.submit(func, item) for item in itertools.islice(it, ahead))
        while pending:
            result = pending.popleft().result()
            for item in itertools.islice(it, 1):
                pending.append(pool.submit(func, item))
            yield result
    except BaseException:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    if own:
        pool.shutdown(wait=False)   # every result is in: the workers exit on their own, not waited for


class OrderedPool:
    """One pool of `workers` processes for several `ordered_map`s in a row (a context manager; with
    workers <= 1 everything runs in this process)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "OrderedPool":
        if self.workers > 1:
            self._pool = process_pool(self.workers)
        return self

    def __exit__(self, *exc) -> bool:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        return False

    def map(self, func: Callable[[T], R], items: Iterable[T], in_flight: int | None = None) -> Iterator[R]:
        """`ordered_map(func, items)` on this pool."""
        return ordered_map(func, items, self.workers, in_flight, pool=self._pool)
