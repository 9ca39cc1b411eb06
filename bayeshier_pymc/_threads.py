"""The thread pool of the package's compiled loops over independent parts of an array.

NumPy's loops and the numba kernels (compiled with ``nogil``) release the GIL, so the parts
run in parallel in threads of one process, writing into disjoint slices of shared outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["ahead", "cpu_count", "in_threads"]

Part = TypeVar("Part")
Item = TypeVar("Item")
_END = object()
"""What :func:`ahead`'s thread returns once the items are exhausted."""


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - platforms without affinity


def in_threads(run: Callable[[Part], Any], parts: Sequence[Part]) -> None:
    """``run(part)`` for every part, in one thread per CPU at most (in this one for one part).

    The parts must be independent, so that the results do not depend on the threads; the
    first error of a part is raised once every part has been submitted.
    """
    n_threads = min(len(parts), cpu_count())
    if n_threads <= 1:
        for part in parts:
            run(part)
        return
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for future in [pool.submit(run, part) for part in parts]:
            future.result()


def ahead(items: Iterator[Item]) -> Iterator[Item]:
    """The items of ``items`` in order, each computed in a thread while the caller has the last.

    One item is computed ahead (so two are held at once): the caller's work on an item and
    the computation of the next overlap, on two cores where both release the GIL. An error of
    the computation is raised when its item is asked for.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, items, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, items, _END)
            yield item
