"""The threads of the package's compiled loops: over parts of an array, or beside a block.

NumPy's loops and the numba kernels (compiled with ``nogil``) release the GIL, so the parts
run in parallel in threads of one process, writing into disjoint slices of shared outputs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["ahead", "beside", "cpu_count", "in_threads"]

Part = TypeVar("Part")
Item = TypeVar("Item")
Result = TypeVar("Result")
_END = object()
"""What :func:`ahead`'s thread returns once the items are exhausted."""


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - platforms without affinity


def in_threads(run: Callable[[Part], Any], parts: Sequence[Part]) -> None:
    """``run(part)`` for every part, in one thread per CPU at most (in this one for one part).

    The parts must be independent, so that the results do not depend on the threads. The first
    error of a part, in the order of ``parts``, is raised as soon as it is met; so is a
    KeyboardInterrupt (Ctrl-C) raised in this thread while it waits. Either way the parts not yet
    started are cancelled, and the ones under way are waited for (a part is short), so that no
    thread outlives the call.
    """
    n_threads = min(len(parts), cpu_count())
    if n_threads <= 1:
        for part in parts:
            run(part)
        return
    pool = ThreadPoolExecutor(max_workers=n_threads)
    try:
        for future in [pool.submit(run, part) for part in parts]:
            future.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def ahead(items: Iterator[Item]) -> Iterator[Item]:
    """The items of ``items`` in order, each computed in a thread while the caller has the last.

    One item is computed ahead (so two are held at once): the caller's work on an item and
    the computation of the next overlap, on two cores where both release the GIL. An error of
    the computation is raised when its item is asked for. The next item is started only when
    the caller takes one: after an error or a KeyboardInterrupt (Ctrl-C), in the caller or in
    the computation, or once the generator is closed, none is started, and the one under way is
    waited for, so that no thread outlives the generator.
    """
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pending = pool.submit(next, items, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, items, _END)
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def beside(run: Callable[[Callable[[], bool]], Result]) -> Iterator[Future[Result]]:
    """``run(stopped)`` in a thread while the block runs; the block gets its future.

    ``run`` should ask ``stopped()`` between short steps and give up (raise) once it is True:
    it turns True when the block raises, an error or a KeyboardInterrupt (Ctrl-C), so that the
    block's exit, which waits for the thread whichever way the block ends, comes within a step
    and no thread outlives it.
    """
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        yield pool.submit(run, stop.is_set)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True)
