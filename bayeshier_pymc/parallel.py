"""Many independent tasks through joblib: the one dispatcher of every study, comparison and cohort.

Simulation studies (:func:`~bayeshier_pymc.study.simulation_study`), depth comparisons
(:func:`~bayeshier_pymc.depth_comparison.compare_depths`), many data sets
(:func:`~bayeshier_pymc.many_fits.fit_many`) and permutation tests
(:func:`~bayeshier_pymc.permutation.permutation_pvalues`) are made of independent tasks.
:func:`dispatch` runs them through :class:`joblib.Parallel`, so whatever joblib is configured
to use runs them unchanged: one process (the default), local processes
(``joblib.parallel_config(backend="loky", n_jobs=4)``) or a Dask cluster
(``joblib.parallel_config(backend="dask")`` with a ``distributed.Client`` open); see
``docs/parallel.md``.

The numbers do not depend on where the tasks run:

- every task is a pure function of its arguments and its seed, and each task's seed is fixed
  by the caller before any task runs (for example by :func:`task_seeds`: spawned from the
  caller's seed and keyed by the task's position), never drawn by the task from a generator
  shared between tasks;
- the results come back in task order, whatever order the workers finish in;
- the samplers' draws do not depend on the cores they are given.

The warnings of a task (a short run's :class:`~bayeshier_pymc.convergence.ConvergenceWarning`)
are given again in the caller's process, with the task's label, also when the task ran on
another machine.

When the tasks run in parallel, each inner fit gets one core (:func:`inner_fit_options`):
the chains of one fit run one after another in its worker, so that n workers use n cores and
a Dask worker (a daemonic process) never starts processes of its own. joblib's local backend
also caps the BLAS and numba threads of its workers at their share of the cores.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import joblib
import numpy as np
from tqdm.auto import tqdm

from bayeshier_pymc._validation import check_sampler_arguments
from bayeshier_pymc.convergence import _caller_outside_package

__all__ = [
    "TaskError",
    "dispatch",
    "inner_fit_options",
    "outer_jobs",
    "task_seeds",
]

Result = TypeVar("Result")


class TaskError(RuntimeError):
    """One task of a :func:`dispatch` failed.

    The message names the task (which data set, depth, replicate or permutations) and the
    error it raised; when the task ran in this process the original error is the
    ``__cause__``.

    Attributes
    ----------
    label
        The task, in words.
    error
        The type and message of the error the task raised.
    """

    def __init__(self, label: str, error: str) -> None:
        super().__init__(f"{label} failed: {error}")
        self.label = label
        self.error = error

    def __reduce__(self) -> tuple[type[TaskError], tuple[str, str]]:
        # the message is rebuilt from the label and the error in the process that receives it
        return TaskError, (self.label, self.error)


def outer_jobs(n_jobs: int | None = None) -> int:
    """How many tasks :func:`dispatch` runs at once with ``n_jobs``.

    Parameters
    ----------
    n_jobs
        joblib's ``n_jobs``; ``None``: the current :func:`joblib.parallel_config` (one at a
        time unless it says otherwise; with ``backend="dask"`` the cluster's cores).

    Returns
    -------
    int
    """
    return int(joblib.effective_n_jobs(n_jobs))


def inner_fit_options(options: Mapping[str, Any], n_jobs: int | None = None) -> dict[str, Any]:
    """The sampler's keywords of every task, checked before any task is dispatched.

    Parameters
    ----------
    options
        Keywords of :meth:`~bayeshier_pymc.ShrinkageModel.sample`.
    n_jobs
        As in :func:`outer_jobs`.

    Returns
    -------
    dict
        ``options``; when more than one task runs at once, ``cores=1`` unless ``options``
        sets ``cores`` (no oversubscription: n workers use n cores, the chains of a fit run
        one after another, and a Dask worker starts no processes) and ``progressbar=False``
        (the dispatcher reports progress).

    Raises
    ------
    ValueError
        For bad ``draws``, ``tune``, ``chains`` or ``cores``, here rather than as a
        :class:`TaskError` of every task.
    """
    counts = {name: options[name] for name in ("draws", "tune", "chains") if name in options}
    check_sampler_arguments(
        **{"draws": 1, "tune": 0, "chains": 1, **counts}, cores=options.get("cores")
    )
    inner = dict(options)
    if outer_jobs(n_jobs) > 1:
        inner.setdefault("cores", 1)
        inner["progressbar"] = False
    return inner


def task_seeds(random_seed: int | None, n_tasks: int) -> list[int]:
    """Independent integer seeds of ``n_tasks`` tasks, spawned from ``random_seed``.

    Task ``i`` gets the ``i``-th child of ``numpy.random.SeedSequence(random_seed)``, turned
    into an integer in ``[0, 2**63)`` (what the samplers take); it depends on ``random_seed``
    and ``i`` only, not on the number of workers or the order they finish in.

    Parameters
    ----------
    random_seed
        The caller's seed; ``None`` draws fresh entropy (the tasks are then still independent,
        but not reproducible).
    n_tasks
        Number of tasks.

    Returns
    -------
    list of int
    """
    children = np.random.SeedSequence(random_seed).spawn(n_tasks)
    return [int(child.generate_state(1, np.uint64)[0] >> np.uint64(1)) for child in children]


def dispatch(
    function: Callable[..., Result],
    tasks: Iterable[tuple[str, tuple[Any, ...]]],
    *,
    n_jobs: int | None = None,
    progress: bool = False,
    total: int | None = None,
    unit: str = "fit",
) -> Iterator[Result]:
    """Run ``function(*arguments)`` for every ``(label, arguments)`` of ``tasks``, through joblib.

    Parameters
    ----------
    function
        What every task runs; it and its arguments must pickle (cloudpickle) for a pool of
        processes or a cluster.
    tasks
        ``(label, arguments)`` pairs; the label names the task in errors ("data set
        'cohort_b'", "depth 1", …). A generator is consumed as workers become free.
    n_jobs
        joblib's ``n_jobs``; ``None`` (default): the current :func:`joblib.parallel_config`
        (sequential in this process unless it says otherwise; ``backend="dask"`` runs the
        tasks on the cluster of the open ``distributed.Client``).
    progress
        Show one progress bar over the tasks.
    total
        Number of tasks, for the progress bar.
    unit
        What the progress bar counts.

    Yields
    ------
    object
        The results, in the order of ``tasks``.

    Warns
    -----
    Warning
        Every warning a task gave (a :class:`~bayeshier_pymc.convergence.ConvergenceWarning`
        of a short run, …), given again here with the task's label at its end, also when
        the task ran on another machine.

    Raises
    ------
    TaskError
        When a task raises; the message names it.
    """
    parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator")
    origin = (os.getpid(), threading.get_ident())
    calls = (
        joblib.delayed(_run_task)(function, label, arguments, origin) for label, arguments in tasks
    )
    with tqdm(total=total, disable=not progress, unit=unit) as bar:
        for result, caught in parallel(calls):
            for category, message in caught:
                warnings.warn(message, category, stacklevel=_caller_outside_package())
            bar.update()
            yield result


def _run_task(
    function: Callable[..., Result],
    label: str,
    arguments: tuple[Any, ...],
    origin: tuple[int, int],
) -> tuple[Result, list[tuple[type[Warning], str]]]:
    """``function(*arguments)`` and the warnings it gave, each naming ``label``.

    The warnings are recorded under the filters in force where the task runs, to be given
    again in the caller's process (a worker's own would be lost in its log), except in
    another thread of the caller's process (joblib's threading backend), where recording
    is not thread-safe and they are given as they come. An error is raised again as a
    :class:`TaskError` naming ``label``.
    """
    if os.getpid() == origin[0] and threading.get_ident() != origin[1]:
        return _attempt(function, label, arguments), []
    with warnings.catch_warnings(record=True) as caught:
        result = _attempt(function, label, arguments)
    return result, [(record.category, f"{record.message} ({label})") for record in caught]


def _attempt(function: Callable[..., Result], label: str, arguments: tuple[Any, ...]) -> Result:
    """``function(*arguments)``; an error in it is raised again as a :class:`TaskError`."""
    try:
        return function(*arguments)
    except Exception as error:
        # a task of a nested dispatch already names itself
        detail = str(error) if isinstance(error, TaskError) else f"{type(error).__name__}: {error}"
        raise TaskError(label, detail) from error
